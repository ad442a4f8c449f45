"""Everything the deployment names in the service really exists in the service.

A real server is started the way the image starts it (`service.app:main`, configured only through
CENTERMASK_* environment variables, on 127.0.0.1) with the tiny test checkpoint and an API key. Then:

* every probe path (Kubernetes probes, compose and Dockerfile healthchecks) and the metrics path
  answers 200 without an API key, on the port the manifests use;
* every CENTERMASK_* name in the ConfigMap, Deployment, compose file, Dockerfile and docs is a field
  of `service.settings.Settings`, and every configured value validates;
* after one real POST /segment and one gRPC ModelInfer, every metric (and label value) used by the
  alerts, the PrometheusRule, the Grafana dashboard, the prometheus-adapter rules and the HPA is exported
  by GET /metrics;
* SIGTERM makes the server unready and exit within the drain timeout (what the grace periods assume).
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import CENTERMASK_SERVE, clean_environment, free_port

from .conftest import (
    DEPLOY_DOC,
    DOCKER,
    K8S,
    OVERLAYS,
    REPO,
    adapter_rules,
    compose_config,
    configmap_data,
    dockerfile_instructions,
    dockerfile_stages,
    expression_params,
    find,
    kserve_predictor,
    lazy_params,
    load_yaml,
    parse_duration,
    rendered,
    selectors,
    served_metric_name,
)

API_KEY = "deploy-consistency-key"
# Long enough for the in-flight batch of the SIGTERM test to finish on a loaded 2-core machine (its
# premise: the answer comes inside the drain time; what happens past it is tests/service's business).
DRAIN_TIMEOUT_S = 60
# Labels Prometheus / the Prometheus Operator attach to every scraped series (not the service's).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container"}
# Target labels the operator adds that the service's own labels may shadow (ServiceMonitor honorLabels).
OPERATOR_TARGET_LABELS = TARGET_LABELS | {"endpoint"}


def settings_module() -> Any:
    return pytest.importorskip("service.settings", reason="service/ is not there yet")


def settings_env_names() -> dict[str, str]:
    """{CENTERMASK_FIELD: field} from the Settings class (its env prefix + field names/aliases)."""
    settings_cls = settings_module().Settings
    prefix = settings_cls.model_config.get("env_prefix", "")
    names = {}
    for field_name, field in settings_cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or f"{prefix}{field_name}").upper()] = field_name
    return names


# --------------------------------------------------------------------------------------------------
# the running server


class Server:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, grpc_port: int, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.grpc_port = grpc_port
        self.log = log
        self.client = httpx.Client(base_url=base_url, timeout=60)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings_module()
    pytest.importorskip("service.app", reason="service/app.py is not there yet")
    port, grpc_port = free_port(), free_port()
    env = clean_environment(
        CENTERMASK_WEIGHTS=str(tiny_weights),
        CENTERMASK_DEVICE="cpu",
        CENTERMASK_HOST="127.0.0.1",
        CENTERMASK_PORT=str(port),
        CENTERMASK_GRPC_PORT=str(grpc_port),
        CENTERMASK_API_KEY=API_KEY,
        CENTERMASK_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S),
        CENTERMASK_LOG_LEVEL="warning",
        OMP_NUM_THREADS="2",
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as out:
        # Exactly what the image's ENTRYPOINT (`centermask-serve`, pyproject's service.app:main) runs.
        process = subprocess.Popen(
            CENTERMASK_SERVE,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    srv = Server(process, f"http://127.0.0.1:{port}", grpc_port, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}:\n{srv.logs()}"
            assert time.monotonic() < deadline, f"not ready after 300s:\n{srv.logs()}"
            try:
                if srv.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield srv
    finally:
        srv.client.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def png_bytes(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A deterministic, textured RGB PNG (not blank, so the model has something to look at)."""
    from PIL import Image

    w, h = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            (((x + seed) * 7) % 256, ((y + seed) * 5) % 256, ((x + y) * 3) % 256)
            for y in range(h)
            for x in range(w)
        ]
    )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(server: Server) -> dict[str, list[dict[str, str]]]:
    """{sample name: [labels]} of GET /metrics after one real POST /segment and one gRPC ModelInfer."""
    import grpc
    from prometheus_client.parser import text_string_to_metric_families

    from service.grpc import grpc_predict_v2_pb2 as pb
    from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    response = server.client.post(
        "/segment",
        files={"image": ("probe.png", png_bytes(), "image/png")},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 200, response.text
    request = pb.ModelInferRequest(model_name="centermask")
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(png_bytes())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        answer = GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("x-api-key", API_KEY),), timeout=60
        )
    assert answer.outputs
    metrics = server.client.get("/metrics")
    assert metrics.status_code == 200
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def probe_paths() -> dict[str, str]:
    """{where: path} of every HTTP check the deployment runs against the service."""
    paths = {}
    for overlay in OVERLAYS:
        container = find(rendered(f"overlays/{overlay}"), "Deployment")["spec"]["template"]["spec"][
            "containers"
        ][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            paths[f"k8s {overlay} {probe}"] = container[probe]["httpGet"]["path"]
        monitor = find(rendered(f"overlays/{overlay}"), "ServiceMonitor")
        for endpoint in monitor["spec"]["endpoints"]:
            paths[f"k8s {overlay} ServiceMonitor"] = endpoint["path"]
    (kserve,) = kserve_predictor()["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        paths[f"kserve {probe}"] = kserve[probe]["httpGet"]["path"]
    for name, service in compose_config("cpu")["services"].items():
        if name.startswith("centermask"):
            (url,) = re.findall(r"http://127\.0\.0\.1:%s(/\w+)", service["healthcheck"]["test"][-1])
            paths[f"compose {name} healthcheck"] = url
    for instruction, args in dockerfile_instructions(DOCKER / "Dockerfile"):
        if instruction == "HEALTHCHECK":
            (url,) = re.findall(r"http://127\.0\.0\.1:%s(/\w+)", args)
            paths["Dockerfile HEALTHCHECK"] = url
    prometheus = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    for job in prometheus["scrape_configs"]:
        if job["job_name"] == "centermask-serve":
            paths["compose prometheus scrape"] = job.get("metrics_path", "/metrics")
    return paths


@pytest.mark.parametrize("where", lazy_params(lambda: sorted(probe_paths())))
def test_probe_and_scrape_paths_answer_without_api_key(server: Server, where: str) -> None:
    path = probe_paths()[where]
    response = server.client.get(path)
    assert response.status_code == 200, f"{where}: GET {path} -> {response.status_code} {response.text[:200]}"


def test_api_key_is_enforced_so_the_probe_check_means_something(server: Server) -> None:
    assert server.client.get("/v1/model").status_code == 401
    assert server.client.get("/v1/model", headers={"X-API-Key": API_KEY}).status_code == 200


def test_ports_agree() -> None:
    """Settings' default ports (HTTP, gRPC) = Dockerfile EXPOSE = compose targets = ConfigMap =
    containerPorts = Service target ports; KServe's gRPC variant declares the gRPC one."""
    fields = settings_module().Settings.model_fields
    http, grpc = fields["port"].default, fields["grpc_port"].default
    expose = [a for i, a in dockerfile_stages(DOCKER / "Dockerfile")[-1] if i == "EXPOSE"]
    assert expose == [f"{http} {grpc}"]
    for name, service in compose_config("cpu")["services"].items():
        if name.startswith("centermask"):
            assert [p["target"] for p in service["ports"]] == [http, grpc]
            assert service["environment"]["CENTERMASK_PORT"] == str(http)
            assert service["environment"]["CENTERMASK_GRPC_PORT"] == str(grpc)
    for overlay in OVERLAYS:
        docs = rendered(f"overlays/{overlay}")
        assert configmap_data(docs)["CENTERMASK_PORT"] == str(http)
        assert configmap_data(docs)["CENTERMASK_GRPC_PORT"] == str(grpc)
        container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
            ("http", http),
            ("grpc", grpc),
        ]
        service = find(docs, "Service", "centermask-serve")
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    (kserve,) = kserve_predictor()["containers"]
    assert [p["containerPort"] for p in kserve["ports"]] == [http]
    for container in (kserve, kserve_predictor("kserve-grpc")["containers"][0]):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["CENTERMASK_PORT"], env["CENTERMASK_GRPC_PORT"]) == (str(http), str(grpc))
    (h2c,) = kserve_predictor("kserve-grpc")["containers"][0]["ports"]
    assert h2c["containerPort"] == grpc


# --------------------------------------------------------------------------------------------------
# settings


def named_settings() -> dict[str, set[str]]:
    """{where: {CENTERMASK_* names}} across the deployment files and docs."""
    found: dict[str, set[str]] = {}
    pattern = re.compile(r"\bCENTERMASK_[A-Z0-9_]+")
    for overlay in OVERLAYS:
        docs = rendered(f"overlays/{overlay}")
        found[f"k8s {overlay} ConfigMap"] = set(configmap_data(docs))
        container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        found[f"k8s {overlay} Deployment env"] = {
            e["name"] for e in container["env"] if e["name"].startswith("CENTERMASK_")
        }
    for name, service in compose_config("cpu")["services"].items():
        found[f"compose {name}"] = {k for k in service.get("environment", {}) if k.startswith("CENTERMASK_")}
    found["docker-compose.yml text"] = set(pattern.findall((REPO / "docker-compose.yml").read_text()))
    found["Dockerfile"] = set(pattern.findall((DOCKER / "Dockerfile").read_text()))
    found["k8s files"] = {n for p in K8S.rglob("*") if p.is_file() for n in pattern.findall(p.read_text())}
    found["docs/deploy.md"] = set(pattern.findall(DEPLOY_DOC.read_text()))
    readme = REPO / "README.md"
    if readme.is_file():
        found["README.md"] = set(pattern.findall(readme.read_text()))
    return found


@pytest.mark.parametrize("where", lazy_params(lambda: sorted(named_settings())))
def test_setting_names_are_settings_fields(where: str) -> None:
    unknown = named_settings()[where] - set(settings_env_names())
    assert not unknown, f"{where} names settings the service does not have: {sorted(unknown)}"


def test_every_setting_is_documented() -> None:
    missing = set(settings_env_names()) - named_settings()["docs/deploy.md"]
    assert not missing, f"docs/deploy.md does not document {sorted(missing)}"


def configured_environments() -> dict[str, dict[str, str]]:
    """{where: {CENTERMASK_*: value}} that a deployment would start the service with."""
    envs: dict[str, dict[str, str]] = {}
    containers = {}
    for overlay in OVERLAYS:
        docs = rendered(f"overlays/{overlay}")
        containers[f"k8s {overlay}"] = (
            dict(configmap_data(docs)),
            find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0],
        )
    (kserve,) = kserve_predictor()["containers"]
    containers["k8s kserve"] = ({}, kserve)
    for where, (env, container) in containers.items():
        cpu_request = container["resources"]["requests"]["cpu"]
        cores = math.ceil(float(cpu_request[:-1]) / 1000 if cpu_request.endswith("m") else float(cpu_request))
        for e in container["env"]:
            if not e["name"].startswith("CENTERMASK_"):
                continue
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "resourceFieldRef" in e["valueFrom"]:
                env[e["name"]] = str(cores)
            elif "secretKeyRef" in e["valueFrom"]:
                # Each Secret its own value (the admin key must differ from the API key).
                env[e["name"]] = f"a-value-of-{e['valueFrom']['secretKeyRef']['name']}"
        envs[where] = env
    for name, service in compose_config("cpu")["services"].items():
        if name.startswith("centermask"):
            envs[f"compose {name}"] = {
                k: v
                for k, v in service["environment"].items()
                if k.startswith("CENTERMASK_") and v is not None
            }
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    # ENV values may name build arguments: take their defaults (the last stage's declaration wins).
    build_args = {
        name: value.strip('"')
        for i, a in instructions
        if i == "ARG" and "=" in a
        for name, value in [a.split("=", 1)]
    }

    def expanded(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], value)

    envs["Dockerfile"] = {
        k: expanded(v)
        for i, a in instructions
        if i == "ENV"
        for k, v in re.findall(r"(CENTERMASK_\w+)=(\S+)", a)
    }
    return envs


@pytest.mark.parametrize("where", lazy_params(lambda: sorted(configured_environments())))
def test_configured_values_are_valid_settings(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_cls = settings_module().Settings
    for name in list(os.environ):
        if name.startswith("CENTERMASK_"):
            monkeypatch.delenv(name)
    for name, value in configured_environments()[where].items():
        monkeypatch.setenv(name, value)
    settings = settings_cls()
    if "k8s" in where or "compose" in where:
        assert settings.drain_timeout_s == 25


# --------------------------------------------------------------------------------------------------
# metrics


def test_metric_labels_do_not_collide_with_operator_target_labels(
    exported: dict[str, list[dict[str, str]]],
) -> None:
    """The ServiceMonitor must honour the service's labels where they shadow a target label."""
    own = {
        label
        for name, rows in exported.items()
        if name.startswith("centermask_")
        for r in rows
        for label in r
    }
    collisions = own & OPERATOR_TARGET_LABELS
    for overlay in OVERLAYS:
        (endpoint,) = find(rendered(f"overlays/{overlay}"), "ServiceMonitor")["spec"]["endpoints"]
        if collisions:
            assert endpoint.get("honorLabels") is True, f"labels {collisions} would become exported_*"
    assert not own & TARGET_LABELS, (
        "job/instance/namespace/pod labels from the service would break the adapter"
    )


@pytest.mark.parametrize("where, expr", lazy_params(expression_params, 2))
def test_expressions_use_exported_metrics(
    exported: dict[str, list[dict[str, str]]], where: str, expr: str
) -> None:
    for name, matchers in selectors(expr):
        if not name.startswith("centermask_"):
            assert name == "up", f"{where}: unexpected metric {name}"
            continue
        assert name in exported, f"{where}: {name} is not exported by /metrics (have: {sorted(exported)})"
        rows = exported[name]
        labels = {label for r in rows for label in r}
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            assert label in labels, f"{where}: {name} has no label {label!r} (has {sorted(labels)})"
            values = {r[label] for r in rows if label in r}
            if op == "=":
                assert value in values, f"{where}: {name}{{{label}={value!r}}} never exported (have {values})"
            elif op == "=~" and label == "endpoint":
                assert any(re.fullmatch(value, v) for v in values), (
                    f"{where}: {label}=~{value!r} matches no route"
                )


def test_hpa_metrics_come_from_exported_series(exported: dict[str, list[dict[str, str]]]) -> None:
    rules = {served_metric_name(rule): rule for rule in adapter_rules()}
    for overlay in OVERLAYS:
        hpa = find(rendered(f"overlays/{overlay}"), "HorizontalPodAutoscaler")
        for metric in hpa["spec"]["metrics"]:
            name = metric["pods"]["metric"]["name"]
            assert name in rules, f"HPA metric {name} is served by no prometheus-adapter rule"
            for series, _ in selectors(rules[name]["seriesQuery"]):
                assert series in exported, (
                    f"adapter rule for {name} discovers {series}, which is not exported"
                )


# --------------------------------------------------------------------------------------------------
# shutdown (last: it stops the module's server)


def test_sigterm_drains_and_exits_within_the_grace_period(server: Server) -> None:
    """What the image's exec-form ENTRYPOINT/STOPSIGNAL and the grace periods assume: on SIGTERM a
    request already in flight still gets its answer, the server turns unready and exits in time."""
    images = [("images", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(8)]
    outcome: dict[str, Any] = {}

    def post_batch() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            try:
                outcome["response"] = client.post(
                    "/segment/batch", files=images, headers={"X-API-Key": API_KEY}
                )
            except httpx.HTTPError as e:
                outcome["error"] = e

    worker = threading.Thread(target=post_batch)
    worker.start()
    deadline = time.monotonic() + 30
    while in_flight(server) < 1:
        assert worker.is_alive() and time.monotonic() < deadline, f"the batch never got in flight: {outcome}"
        time.sleep(0.01)

    server.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        status = server.client.get("/readyz", timeout=2).status_code
        assert status == 503, status
    except httpx.TransportError:
        pass  # already stopped listening: equally out of rotation
    worker.join(timeout=DRAIN_TIMEOUT_S + 10)
    assert "error" not in outcome, f"in-flight request dropped by the shutdown: {outcome['error']!r}"
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert len(outcome["response"].json()["results"]) == len(images)
    answered = time.monotonic()

    code = server.process.wait(timeout=DRAIN_TIMEOUT_S + 20)
    exited = time.monotonic()
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so outside a container the
    # status is -SIGTERM (as PID 1 in a container the re-raised signal is ignored and it exits 0).
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{server.logs()}"
    assert exited - started <= DRAIN_TIMEOUT_S + 10, exited - started
    # Once nothing is in flight the drain ends: the process does not sit out the rest of the timeout.
    assert exited - answered <= 10, exited - answered
    for name, service in compose_config("cpu")["services"].items():
        if name.startswith("centermask"):
            drain = float(service["environment"]["CENTERMASK_DRAIN_TIMEOUT_S"])
            assert parse_duration(service["stop_grace_period"]) > drain


def in_flight(server: Server) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = server.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "centermask_requests_in_flight":
                return sample.value
    raise AssertionError("centermask_requests_in_flight is not exported")
