"""deploy/: the Prometheus scrape config is valid (promtool, where installed) and targets the
metrics Service of the manifests; every query of the Grafana dashboard names only metrics the
collector exports; the README documents every family."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from anime_pipeline.ops.cli import DEFAULT_PORT
from anime_pipeline.ops.metrics import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "anime-pipeline-dashboard.json"
MANIFESTS = ROOT / "deploy" / "k8s" / "anime-pipeline.yaml"

# PromQL functions, aggregations and keywords the dashboard may use (anything else that looks
# like a name is taken for a metric, and must be ours).
PROMQL_WORDS = frozenset("""
sum avg min max count stddev stdvar topk bottomk quantile count_values group
rate irate increase delta idelta deriv resets changes histogram_quantile clamp_min clamp_max
abs ceil floor round sort sort_desc time vector scalar absent label_replace label_join
avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time
by without on ignoring group_left group_right bool and or unless offset inf nan
""".split())
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, grouping labels, ranges,
    strings, numbers and Grafana variables left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e) if t not in PROMQL_WORDS}


def family_of(name: str) -> str | None:
    if name in FAMILIES:
        return name
    for suffix in SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and (base in FAMILIES or base + "_total" in FAMILIES):
            return base if base in FAMILIES else base + "_total"
    return None


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            panels(p.get("panels", []))
            out.extend(t["expr"] for t in p.get("targets", []))

    panels(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert m, query
            out.append(m.group(1))
    return out


def test_metric_names_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, backend) (rate('
            'anime_pipeline_clip_render_seconds_bucket{status="ok"}[$__rate_interval]))) '
            '/ clamp_min(up, 1e-9) > 0.5')
    assert metric_names(expr) == {"anime_pipeline_clip_render_seconds_bucket", "up"}
    assert family_of("anime_pipeline_clip_render_seconds_count") == \
        "anime_pipeline_clip_render_seconds"
    assert family_of("anime_pipeline_clips_total") == "anime_pipeline_clips_total"
    assert family_of("anime_pipeline_clips_created") == "anime_pipeline_clips_total"
    assert family_of("up") is None


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"
            assert p["datasource"]["uid"] == "${datasource}"
    queries = dashboard_queries(dash)
    used: set[str] = set()
    for q in queries:
        names = metric_names(q)
        assert names, f"no metric in {q!r}"
        unknown = {n for n in names if family_of(n) is None}
        assert not unknown, f"{q!r} names metrics we do not export: {sorted(unknown)}"
        used |= {f for n in names if (f := family_of(n))}
    p = "anime_pipeline_"
    want = {p + n for n in ("clip_render_seconds", "clips_total", "runs", "queue_backlog",
                            "usage_total", "budget_remaining", "gpu_memory_used_bytes",
                            "gpu_memory_total_bytes", "gpu_utilisation_ratio",
                            "runtime_profile", "policy_degraded")}
    assert want <= used, sorted(want - used)
    assert any("histogram_quantile" in q for q in queries)


def test_prometheus_config_targets_the_metrics_service() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "anime-pipeline"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"anime-pipeline-metrics.anime.svc:{DEFAULT_PORT}"]
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(MANIFESTS.read_text(encoding="utf-8"))}
    service = docs[("Service", "anime-pipeline-metrics")]
    assert [p["port"] for p in service["spec"]["ports"]] == [DEFAULT_PORT]
    pod = docs[("Deployment", service["spec"]["selector"]["app"])]["spec"]["template"]["spec"]
    [metrics] = [c for c in pod["containers"] if c["name"] == "metrics"]
    assert metrics["command"][:3] == ["anime-pipeline", "metrics", "serve"]
    assert metrics["command"][metrics["command"].index("--port") + 1] == str(DEFAULT_PORT)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus; .ci/system-deps)")
def test_promtool_accepts_the_prometheus_config() -> None:
    done = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_YML)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_documents_every_family() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Metrics"):]
    section = section[:section.find("\n## ", 4)]
    missing = [name for name in FAMILIES if f"`{name}`" not in section]
    assert not missing, missing
