"""Producer-facing explanations of a runtime profile and a policy, in English and Chinese.

Each explanation answers: what was found, which class, why, what it limits, what would improve it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from anime_pipeline.runtime.policy import ExecutionPolicy, ExecutionPolicyResolver
from anime_pipeline.runtime.profile import RuntimeProfile

if TYPE_CHECKING:
    from anime_pipeline.runtime.monitor import MetricSnapshot

LANGS = ("en", "zh")
LOW_DISK_GB = 20.0
LOW_MEMORY_GB = 8.0


def _lang(lang: str) -> str:
    lang = (lang or "en").lower().replace("_", "-")
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("en"):
        return "en"
    raise ValueError(f"unsupported language {lang!r}; one of {LANGS}")


def _t(lang: str, en: str, zh: str) -> str:
    return zh if lang == "zh" else en


def when(ts: float) -> str:
    """An epoch time as the explanations write it (UTC, to the second)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


CLASS_NAMES = {
    "LOCAL_GPU_HIGH": ("local GPU, high (16 GB class)", "本地 GPU·高配（16 GB 级）"),
    "LOCAL_GPU_MID": ("local GPU, mid (8 GB class)", "本地 GPU·中配（8 GB 级）"),
    "LOCAL_GPU_LOW": ("local GPU, low (4–6 GB class)", "本地 GPU·低配（4–6 GB 级）"),
    "LOCAL_CPU_ONLY": ("CPU only", "仅 CPU"),
    "CLOUD_HYBRID": ("hybrid: remote render backend + this machine", "混合：远程渲染后端 + 本机"),
}


def class_name(cls: str, lang: str) -> str:
    en, zh = CLASS_NAMES[str(cls)]
    return _t(_lang(lang), en, zh)


def _found(p: RuntimeProfile, lang: str) -> list[str]:
    c, m = p.cpu, p.memory
    ghz = (c.max_freq_mhz or c.freq_mhz or 0) / 1000
    ghz_txt = f"{ghz:.1f} GHz" if ghz else _t(lang, "frequency unknown", "频率未知")
    lines = [
        _t(
            lang,
            f"CPU: {c.model or 'unknown model'}, {c.physical_cores} physical cores / "
            f"{c.threads} threads, {ghz_txt} (score {c.score})",
            f"CPU：{c.model or '型号未知'}，{c.physical_cores} 个物理核心 / {c.threads} 个线程，"
            f"{ghz_txt}（评分 {c.score}）",
        ),
        _t(
            lang,
            f"Memory: {m.total_gb:.1f} GB total, {m.available_gb:.1f} GB available",
            f"内存：共 {m.total_gb:.1f} GB，可用 {m.available_gb:.1f} GB",
        ),
    ]
    if not p.gpus:
        why = p.gpu.reason or ""
        lines.append(_t(lang, f"GPU: none found ({why})", f"GPU：未发现 NVIDIA GPU（{why}）"))
    for g in p.gpus:
        nvenc = {
            True: _t(lang, "NVENC encoding works", "NVENC 硬件编码可用"),
            False: _t(lang, "NVENC encoding does NOT work", "NVENC 硬件编码不可用"),
            None: _t(lang, "NVENC not tested", "NVENC 未测试"),
        }[g.nvenc_works]
        util = "?" if g.utilisation_pct is None else f"{g.utilisation_pct:.0f}%"
        lines.append(
            _t(
                lang,
                f"GPU {g.index}: {g.name}, {g.vram_total_gib:.1f} GiB VRAM "
                f"({g.vram_used_mb} MiB in use), utilisation {util}, driver "
                f"{p.gpu.driver or '?'}; {nvenc}",
                f"GPU {g.index}：{g.name}，显存 {g.vram_total_gib:.1f} GiB"
                f"（已用 {g.vram_used_mb} MiB），利用率 {util}，"
                f"驱动 {p.gpu.driver or '?'}；{nvenc}",
            )
        )
    s = p.software
    if s.ffmpeg_path:
        hw = ", ".join(s.hardware_encoders) or _t(lang, "none", "无")
        lines.append(
            _t(
                lang,
                f"ffmpeg {s.ffmpeg_version} at {s.ffmpeg_path}; "
                f"hardware encoders compiled in: {hw}",
                f"ffmpeg {s.ffmpeg_version}（{s.ffmpeg_path}）；已编译的硬件编码器：{hw}",
            )
        )
    else:
        lines.append(_t(lang, f"ffmpeg: NOT usable ({s.error})", f"ffmpeg：不可用（{s.error}）"))
    if not p.backends:
        lines.append(_t(lang, "Render backends: none configured", "渲染后端：未配置"))
    for b in p.backends:
        if b.reachable:
            state = _t(
                lang,
                f"reachable (HTTP {b.status}, {b.latency_ms} ms)",
                f"可访问（HTTP {b.status}，{b.latency_ms} 毫秒）",
            )
        else:
            state = _t(lang, f"NOT reachable ({b.error})", f"无法访问（{b.error}）")
        lines.append(
            _t(
                lang,
                f"Render backend {b.name} at {b.url}: {state}",
                f"渲染后端 {b.name}（{b.url}）：{state}",
            )
        )
    if p.disk:
        lines.append(
            _t(
                lang,
                f"Disk at {p.disk.path}: {p.disk.free_gb:.1f} GB free of {p.disk.total_gb:.1f} GB",
                f"存储目录 {p.disk.path}：可用 {p.disk.free_gb:.1f} GB / "
                f"共 {p.disk.total_gb:.1f} GB",
            )
        )
    lines.append(
        _t(
            lang,
            f"OS: {p.os.system} {p.os.release} ({p.os.machine}), Python {p.os.python}",
            f"操作系统：{p.os.system} {p.os.release}（{p.os.machine}），Python {p.os.python}",
        )
    )
    return lines


def _why(p: RuntimeProfile, lang: str) -> list[str]:
    from anime_pipeline.runtime.profile import VRAM_HIGH_GIB, VRAM_LOW_GIB, VRAM_MID_GIB

    out: list[str] = []
    best = p.best_gpu
    if best is None:
        out.append(
            _t(lang, "No NVIDIA GPU could be used on this machine.", "本机没有可用的 NVIDIA GPU。")
        )
    else:
        gib = best.vram_total_gib
        out.append(
            _t(
                lang,
                f"The largest GPU ({best.name}) has {gib:.1f} GiB of VRAM. Thresholds: "
                f"high >= {VRAM_HIGH_GIB} GiB, mid >= {VRAM_MID_GIB} GiB, "
                f"low >= {VRAM_LOW_GIB} GiB; below that the GPU is not used for rendering.",
                f"最大的 GPU（{best.name}）有 {gib:.1f} GiB 显存。"
                f"分级阈值：高配 ≥ {VRAM_HIGH_GIB} GiB，"
                f"中配 ≥ {VRAM_MID_GIB} GiB，低配 ≥ {VRAM_LOW_GIB} GiB；低于此值不用 GPU 渲染。",
            )
        )
    reach = p.reachable_backends
    if p.profile_class == "CLOUD_HYBRID":
        out.append(
            _t(
                lang,
                f"Render backend(s) {', '.join(reach)} answered, and a remote backend outranks "
                "a local GPU smaller than 16 GB, so the class is CLOUD_HYBRID "
                f"(this machine alone would be {p.local_class.value}).",
                f"渲染后端 {', '.join(reach)} 可访问；远程后端优先于 16 GB 以下的本地 GPU，"
                f"因此归为 CLOUD_HYBRID（仅本机则为 {p.local_class.value}）。",
            )
        )
    elif reach:
        out.append(
            _t(
                lang,
                f"Render backend(s) {', '.join(reach)} answered; a 16 GB local GPU takes "
                "precedence, so they are kept as a fallback.",
                f"渲染后端 {', '.join(reach)} 可访问；16 GB 本地 GPU 优先，远程后端作为备用。",
            )
        )
    elif p.backends:
        out.append(
            _t(
                lang,
                "Configured render backends did not answer, so they are not counted.",
                "已配置的渲染后端没有响应，不计入。",
            )
        )
    return out


def _limits(p: RuntimeProfile, policy: ExecutionPolicy, lang: str) -> list[str]:
    out = [describe_policy(policy, lang)]
    cls = p.profile_class
    if cls == "LOCAL_CPU_ONLY":
        out.append(
            _t(
                lang,
                "No generative (image-to-video) rendering: shots are animatics (keyframe + "
                "camera move) or cuts of source clips, encoded on the CPU with libx264.",
                "无法进行生成式（图生视频）渲染：镜头只能是动态分镜（关键帧 + 运镜）或素材剪辑，"
                "由 CPU 以 libx264 编码。",
            )
        )
    elif cls == "LOCAL_GPU_LOW":
        out.append(
            _t(
                lang,
                "Generative rendering is limited to 720p and small models.",
                "生成式渲染限于 720p 和小模型。",
            )
        )
    elif cls == "CLOUD_HYBRID":
        out.append(
            _t(
                lang,
                "Generative renders depend on the remote backend's availability and queue.",
                "生成式渲染取决于远程后端的可用性和排队情况。",
            )
        )
    if policy.encoder == "libx264":
        out.append(
            _t(
                lang,
                "Encoding uses the CPU (libx264), which competes with rendering for cores.",
                "编码使用 CPU（libx264），与渲染争用 CPU 核心。",
            )
        )
    return out


def recommendations(p: RuntimeProfile, lang: str = "en") -> list[str]:
    """What would improve the machine, one sentence each (the "What would improve it"
    section of :func:`explain_profile`): what moves it up a class, and what is broken."""
    lang = _lang(lang)
    out: list[str] = []
    cls = p.profile_class
    if cls == "LOCAL_CPU_ONLY":
        if p.gpus:
            out.append(
                _t(
                    lang,
                    "A GPU with at least 4 GB (better 8–16 GB) of VRAM.",
                    "换用至少 4 GB（最好 8–16 GB）显存的 GPU。",
                )
            )
        else:
            out.append(
                _t(
                    lang,
                    "An NVIDIA GPU with 8–16 GB of VRAM and its driver installed "
                    "(nvidia-smi must work).",
                    "安装 8–16 GB 显存的 NVIDIA GPU 及其驱动（nvidia-smi 能正常运行）。",
                )
            )
        out.append(
            _t(
                lang,
                "Or a ComfyUI render farm: list its servers in render_backends.yaml in "
                "the pipeline home (see the README, 'Generative backends') and make sure "
                "they answer.",
                "或者配置 ComfyUI 渲染农场：在 pipeline home 的 render_backends.yaml 中列出其"
                "服务器（见 README「Generative backends」），并确保其可访问。",
            )
        )
    elif cls == "LOCAL_GPU_LOW":
        out.append(
            _t(
                lang,
                "A GPU with 8 GB or more, or a remote render backend.",
                "换用 8 GB 以上显存的 GPU，或配置远程渲染后端。",
            )
        )
    elif cls == "LOCAL_GPU_MID":
        out.append(
            _t(
                lang,
                "A GPU with 16 GB or more for 1080p generative renders at full speed.",
                "换用 16 GB 以上显存的 GPU，以全速进行 1080p 生成式渲染。",
            )
        )
    elif cls == "LOCAL_GPU_HIGH":
        out.append(
            _t(
                lang,
                "Nothing is required; a second GPU would raise the GPU pool limit.",
                "无需改进；增加一块 GPU 可提高 GPU 池上限。",
            )
        )
    elif cls == "CLOUD_HYBRID" and p.local_class == "LOCAL_CPU_ONLY":
        out.append(
            _t(
                lang,
                "A local NVIDIA GPU would take encoding (NVENC) off the CPU.",
                "本地 NVIDIA GPU 可用 NVENC 编码，减轻 CPU 负担。",
            )
        )
    if p.gpus and not p.nvenc_works:
        out.append(
            _t(
                lang,
                "NVENC does not work: update the NVIDIA driver or use an ffmpeg with NVENC.",
                "NVENC 不可用：请更新 NVIDIA 驱动或使用支持 NVENC 的 ffmpeg。",
            )
        )
    if p.memory.total_gb < LOW_MEMORY_GB:
        out.append(
            _t(
                lang,
                f"More memory (at least {LOW_MEMORY_GB:.0f} GB).",
                f"增加内存（至少 {LOW_MEMORY_GB:.0f} GB）。",
            )
        )
    if p.disk and p.disk.free_gb < LOW_DISK_GB:
        out.append(
            _t(
                lang,
                f"More free disk at the storage root (under {LOW_DISK_GB:.0f} GB now).",
                f"存储目录可用空间不足 {LOW_DISK_GB:.0f} GB，请清理或扩容。",
            )
        )
    for b in p.backends:
        if not b.reachable:
            out.append(
                _t(
                    lang,
                    f"Check backend {b.name} at {b.url}: it did not answer.",
                    f"请检查渲染后端 {b.name}（{b.url}）：没有响应。",
                )
            )
    if p.software.ffmpeg_path is None:
        out.append(
            _t(
                lang,
                "Install ffmpeg (pip install imageio-ffmpeg) or set FFMPEG_BINARY.",
                "安装 ffmpeg（pip install imageio-ffmpeg）或设置 FFMPEG_BINARY。",
            )
        )
    return out


def explain_profile(
    profile: RuntimeProfile, lang: str = "en", policy: ExecutionPolicy | None = None
) -> str:
    lang = _lang(lang)
    policy = policy or ExecutionPolicyResolver().resolve(profile)
    at = when(profile.detected_at)
    title = _t(
        lang,
        f"Runtime profile of {profile.os.hostname} (detected {at})",
        f"运行环境概况：{profile.os.hostname}（检测于 {at}）",
    )
    cls = profile.profile_class.value
    sections = [
        (_t(lang, "What was found", "检测结果"), _found(profile, lang)),
        (_t(lang, "Class", "等级"), [f"{cls} — {class_name(cls, lang)}"]),
        (_t(lang, "Why", "原因"), _why(profile, lang)),
        (_t(lang, "What it limits", "限制"), _limits(profile, policy, lang)),
        (_t(lang, "What would improve it", "改进建议"), recommendations(profile, lang)),
    ]
    parts = [title]
    for head, lines in sections:
        parts.append("")
        parts.append(f"{head}:" if lang == "en" else f"{head}：")
        parts.extend(f"  - {line}" for line in lines)
    return "\n".join(parts) + "\n"


def describe_policy(policy: ExecutionPolicy, lang: str = "en") -> str:
    lang = _lang(lang)
    pref = ", ".join(policy.preferred_backends)
    text = _t(
        lang,
        f"Policy {policy.name}: backends {pref} (in order of preference); encoder "
        f"{policy.encoder}; {policy.render_concurrency} render(s) at a time; up to "
        f"{policy.max_resolution} at {policy.max_fps:g} fps; {policy.max_shots_in_flight} shot(s) "
        f"in flight; GPU pool limit {policy.gpu_pool_limit}.",
        f"执行策略 {policy.name}：渲染后端 {pref}（按优先顺序）；编码器 {policy.encoder}；"
        f"同时渲染 {policy.render_concurrency} 个；最高 {policy.max_resolution}、"
        f"{policy.max_fps:g} fps；同时处理 {policy.max_shots_in_flight} 个镜头；"
        f"GPU 池上限 {policy.gpu_pool_limit}。",
    )
    if policy.degraded:
        reasons = "; ".join(policy.reasons)
        text += _t(
            lang,
            f" DEGRADED (level {policy.degrade_level}): {reasons}.",
            f" 已降级（第 {policy.degrade_level} 级）：{reasons}。",
        )
    return text


def describe_sample(snapshot: MetricSnapshot | None, lang: str = "en") -> str:
    """The monitor's last sample in one line (or that there is none yet)."""
    lang = _lang(lang)
    if snapshot is None:
        return _t(lang, "The monitor has not sampled yet.", "监控尚未采样。")
    s = snapshot
    vram = "-" if s.vram_used_frac is None else f"{s.vram_used_frac:.0%}"
    cpu = "-" if s.cpu_percent is None else f"{s.cpu_percent:.0f}%"
    fail = "-" if s.recent_failure_rate is None else f"{s.recent_failure_rate:.0%}"
    return (
        f"{_t(lang, 'Last sample', '最近采样')} ({when(s.taken_at)}): VRAM {vram}, "
        f"mem {s.mem_available_gb:.1f} GB, CPU {cpu}, "
        f"clip failures {fail} ({s.failures}/{s.failure_samples})"
    )
