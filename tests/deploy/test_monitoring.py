"""Prometheus config, alert rules, Grafana provisioning and dashboard: well-formed, every PromQL
expression parses, the alerts behave (promtool unit tests, when promtool is installed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.grpc import status as grpc_status

from .conftest import (
    ALERTS,
    DASHBOARDS,
    GRAFANA,
    K8S,
    PROMETHEUS_CONFIG,
    REPO,
    alert_rules,
    all_monitoring_expressions,
    dashboard_expressions,
    expression_params,
    lazy_params,
    load_yaml,
    run,
    selectors,
)

HERE = Path(__file__).parent


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not installed (Debian/Ubuntu: apt-get install prometheus); PromQL is still parsed by promql-parser"
        )
    return path


# --------------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_config_is_well_formed() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "centermask-serve" in jobs
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file()


def test_promtool_check_config() -> None:
    proc = run([promtool(), "check", "config", str(PROMETHEUS_CONFIG)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    proc = run([promtool(), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests() -> None:
    """The alerts fire (and stay quiet) on synthetic series as intended: tests/deploy/data/alerts_test.yml."""
    proc = run([promtool(), "test", "rules", "alerts_test.yml"], cwd=HERE / "data")
    assert proc.returncode == 0, proc.stdout + proc.stderr


REQUIRED_ALERTS = {
    "CentermaskTargetDown",
    "CentermaskHighP99Latency",
    "CentermaskHighErrorRatio",
    "CentermaskHighGrpcErrorRatio",
    "CentermaskQueueSaturated",
}


def test_alert_rules_are_complete_and_well_formed() -> None:
    groups = load_yaml(ALERTS)["groups"]
    rules = alert_rules(groups)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule[
            "alert"
        ]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_alerts_use_the_compose_and_kubernetes_job_name() -> None:
    for rule in alert_rules(load_yaml(ALERTS)["groups"]):
        for name, matchers in selectors(rule["expr"]):
            if name == "up":
                assert ("job", "=", "centermask-serve") in matchers


def test_the_grpc_error_ratio_mirrors_the_http_one() -> None:
    """Same threshold, window, duration and severity as the HTTP error-ratio alert, over ModelInfer; failures
    are exactly the codes service/grpc/status.py gives for what HTTP answers with 5xx."""
    rules = {r["alert"]: r for r in alert_rules(load_yaml(ALERTS)["groups"])}
    http, grpc = rules["CentermaskHighErrorRatio"], rules["CentermaskHighGrpcErrorRatio"]
    assert (grpc["for"], grpc["labels"]) == (http["for"], http["labels"])
    assert re.search(r">\s*0\.05\s*$", grpc["expr"]) and re.search(r">\s*0\.05\s*$", http["expr"])
    found = selectors(grpc["expr"])
    assert [name for name, _ in found] == ["centermask_grpc_requests_total"] * 2
    assert found[1][1] == [("method", "=", "ModelInfer")]
    assert found[0][1][0] == ("method", "=", "ModelInfer") and found[0][1][1][:2] == ("code", "=~")
    counted = set(found[0][1][1][2].split("|"))
    server_side = {code.name for status, code in grpc_status._BY_STATUS.items() if status >= 500}
    server_side |= {code.name for code in grpc_status._BY_CODE.values()} - {"FAILED_PRECONDITION"}
    assert server_side <= counted and not counted & {"OK", "CANCELLED", "NOT_FOUND", "INVALID_ARGUMENT"}


def test_queue_saturation_threshold_matches_max_queue() -> None:
    """The queue alert divides by CENTERMASK_MAX_QUEUE; keep it equal to the configured value."""
    (rule,) = [
        r for r in alert_rules(load_yaml(ALERTS)["groups"]) if r["alert"] == "CentermaskQueueSaturated"
    ]
    divisor = re.search(r"centermask_queue_depth\[\w+\]\)\)\s*/\s*(\d+)", rule["expr"])
    assert divisor, rule["expr"]
    settings = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "settings.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert divisor.group(1) == settings["CENTERMASK_MAX_QUEUE"]
    compose = (REPO / "docker-compose.yml").read_text()
    assert f"CENTERMASK_MAX_QUEUE:-{divisor.group(1)}}}" in compose


# --------------------------------------------------------------------------------------------------
# PromQL everywhere


@pytest.mark.parametrize("where, expr", lazy_params(expression_params, 2))
def test_promql_parses(where: str, expr: str) -> None:
    try:
        found = selectors(expr)
    except ValueError as e:
        pytest.fail(f"{where}: {e}\n{expr}")
    assert found, f"{where}: no metric selector in {expr}"


def test_histogram_quantiles_aggregate_rates_by_le() -> None:
    """Every histogram_quantile is over sum by (..., le) (rate(<histogram>_bucket[...]))."""
    pattern = re.compile(r"histogram_quantile\(\s*[\d.]+,\s*sum by \(([^)]*)\)\s*\(\s*rate\((\w+)\{")
    count = 0
    for where, expr in all_monitoring_expressions():
        for m in re.finditer(r"histogram_quantile\(", expr):
            count += 1
            q = pattern.match(expr, m.start())
            assert q, f"{where}: {expr}"
            assert "le" in [s.strip() for s in q.group(1).split(",")], where
            assert q.group(2).endswith("_bucket"), where
    assert count > 0


# --------------------------------------------------------------------------------------------------
# Grafana


def test_grafana_datasource_provisioning() -> None:
    doc = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus" and ds["isDefault"] is True


def test_grafana_dashboard_provider() -> None:
    doc = load_yaml(GRAFANA / "provisioning" / "dashboards" / "centermask-serve.yml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(request.param.read_text())


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


def all_panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in items:
        out.append(panel)
        out += all_panels(panel.get("panels", []))
    return out


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = all_panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            # The data source is the ${datasource} variable, so the dashboard imports anywhere.
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_covers_the_service(dashboard: dict[str, Any]) -> None:
    exprs = [e for _, e in dashboard_expressions(dashboard)]
    text = "\n".join(exprs)

    def has(pattern: str) -> bool:
        return re.search(pattern, text) is not None

    assert has(r"rate\(centermask_requests_total"), "request rate"
    for q in ("0.5", "0.95", "0.99"):
        assert has(
            rf"histogram_quantile\({q}, sum by \(le\) \(rate\(centermask_request_duration_seconds_bucket\{{[^}}]*\}}\[5m\]\)\)\)"
        ), f"p{q[2:]} latency"
    assert has(r"centermask_queue_depth"), "queue depth"
    assert has(r"centermask_batch_size_bucket"), "batch-size distribution"
    assert has(r"sum by \(status_code\) \(rate\(centermask_requests_total"), "errors by status"
    assert has(r"centermask_cuda_memory_allocated_bytes") and has(r"centermask_cuda_memory_reserved_bytes"), (
        "GPU memory"
    )
    assert has(r"sum by \(method, code\) \(rate\(centermask_grpc_requests_total\{"), (
        "gRPC calls by method and code"
    )
    for q in ("0.5", "0.99"):
        assert has(
            rf"histogram_quantile\({q}, sum by \(le\) \(rate\(centermask_grpc_request_duration_seconds_bucket"
            rf'\{{[^}}]*method="ModelInfer"[^}}]*\}}\[5m\]\)\)\)'
        ), f"gRPC ModelInfer p{q[2:]} latency"
    # Metrics that count both protocols are summed over `protocol` or split by it, never left to one series.
    for name in ("centermask_images_total", "centermask_rejected_total"):
        for expr in (e for e in exprs if name in e):
            assert re.search(rf"sum( by \([^)]*\))? \(rate\({name}\{{", expr), expr
    heatmaps = [p for p in all_panels(dashboard["panels"]) if p["type"] == "heatmap"]
    assert any(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
