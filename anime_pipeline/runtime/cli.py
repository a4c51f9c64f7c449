"""``anime-pipeline profile`` and ``anime-pipeline runtime status|degrade|restore|reload``.

:func:`add_subcommands` adds both to an argparse sub-parser set; each sets ``func`` to a
handler ``(args) -> int`` (the exit code). :func:`main` runs them standalone (tests, debugging).
No Dagster import: the commands read and write the same files the monitor sensor uses.

Exit codes: 0 done, 1 failed (message on stderr), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from anime_pipeline.runtime import control
from anime_pipeline.runtime.explain import describe_policy, describe_sample, explain_profile, when
from anime_pipeline.runtime.monitor import Thresholds, restore_samples_needed
from anime_pipeline.runtime.state import default_state_dir, detect_profile


def _default_lang() -> str:
    lang = os.environ.get("LC_ALL") or os.environ.get("LANG") or ""
    return "zh" if lang.lower().startswith("zh") else "en"


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- handlers


def cmd_profile(args: argparse.Namespace) -> int:
    profile = detect_profile(_state_dir(args), storage_root=_state_dir(args))
    if args.save:
        profile.save(Path(args.save))
    if args.json:
        print(profile.to_json())
    else:
        print(explain_profile(profile, args.lang), end="")
        if args.save:
            print(f"\nsaved: {Path(args.save).absolute()}")
    return 0


def _print_status(st: control.RuntimeStatus, lang: str) -> None:
    state = st.state
    zh = lang == "zh"
    print(("运行等级：" if zh else "Profile class: ") + st.profile.profile_class.value)
    print(describe_policy(st.policy, lang))
    if state.degraded:
        head = "降级步骤：" if zh else "Degrade steps:"
        print(head)
        for i, s in enumerate(state.steps, 1):
            print(f"  {i}. [{s.kind}, {s.source}] {s.reason} ({when(s.at)})")
        if state.manual_hold:
            print(
                "  手动降级：监控不会自动恢复，请用 `anime-pipeline runtime restore`。"
                if zh
                else "  Manual degrade: held until `anime-pipeline runtime restore`."
            )
        else:
            need = restore_samples_needed(state, Thresholds.load(st.state_dir))
            print(
                f"  自动恢复：需连续 {need} 次健康采样（当前 {state.healthy_streak}）。"
                if zh
                else f"  Auto-restore after {need} healthy samples in a row "
                f"(now {state.healthy_streak})."
            )
    print(describe_sample(state.last_snapshot, lang))
    print(("状态目录：" if zh else "State: ") + str(st.state_dir.absolute()))


def cmd_status(args: argparse.Namespace) -> int:
    st = control.status(_state_dir(args))
    if args.json:
        _print_json(st.to_json())
    else:
        _print_status(st, args.lang)
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    st = control.degrade(_state_dir(args), args.reason)
    if args.json:
        _print_json(st.to_json())
    else:
        print(describe_policy(st.policy, args.lang))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    st, was_degraded = control.restore(_state_dir(args))
    if args.json:
        _print_json(st.to_json())
    else:
        if not was_degraded:
            print("已是基线策略。" if args.lang == "zh" else "Already at the baseline policy.")
        print(describe_policy(st.policy, args.lang))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    st = control.redetect(_state_dir(args))
    if args.json:
        _print_json(st.to_json())
    else:
        print(explain_profile(st.profile, args.lang), end="")
        print(describe_policy(st.policy, args.lang))
    return 0


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    run.__name__ = handler.__name__
    return run


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lang",
        choices=["en", "zh"],
        default=_default_lang(),
        help="language of the text output (default from $LANG)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="runtime state folder (default: the pipeline home, $ANIME_PIPELINE_HOME or "
        "<project>/.anime_pipeline)",
    )


def add_subcommands(subparsers: Any) -> None:
    """Add ``profile`` and ``runtime`` to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "profile",
        help="detect this machine and explain what it can render",
        description="Detect CPU, memory, GPUs, ffmpeg, render backends and disk; print the "
        "class and what it means (or JSON).",
    )
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--save", metavar="PATH", help="also write the profile JSON to PATH")
    _common(p)
    p.set_defaults(func=_guard(cmd_profile))

    r = subparsers.add_parser(
        "runtime",
        help="the execution policy in force: status, manual degrade/restore, reload",
    )
    rsub = r.add_subparsers(dest="runtime_command", required=True, metavar="ACTION")
    s = rsub.add_parser("status", help="the policy in force and the monitor state")
    s.add_argument("--json", action="store_true")
    _common(s)
    s.set_defaults(func=_guard(cmd_status))
    d = rsub.add_parser("degrade", help="degrade one step now; held until `runtime restore`")
    d.add_argument("--reason", required=True, help="why (recorded in the policy)")
    d.add_argument("--json", action="store_true")
    _common(d)
    d.set_defaults(func=_guard(cmd_degrade))
    o = rsub.add_parser("restore", help="back to the baseline policy of the profile")
    o.add_argument("--json", action="store_true")
    _common(o)
    o.set_defaults(func=_guard(cmd_restore))
    lo = rsub.add_parser("reload", help="re-detect the machine and re-resolve the baseline")
    lo.add_argument("--json", action="store_true")
    _common(lo)
    lo.set_defaults(func=_guard(cmd_reload))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anime-pipeline")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
