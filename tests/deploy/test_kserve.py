"""k8s/kserve: the InferenceService renders with kustomize and is a custom container predictor that
declares the Open Inference Protocol, runs our image on a GPU, and probes the protocol's health endpoints.

No schema validation of the InferenceService itself: kubernetes-validate has no schema for KServe's CRD,
no pip package ships one, and KServe's generated CRD is not ours to vendor. Instead the pod it describes
(the predictor less KServe's own fields) is validated as a Pod with `kubernetes-validate --strict`, and
KServe's fields are checked here; the probe paths and settings are checked against the real server in
test_consistency.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    K8S_VERSIONS,
    KSERVE_PREDICTOR_FIELDS,
    find,
    kserve_predictor,
    render,
    rendered,
    run,
    tool,
)


def container() -> dict[str, Any]:
    (c,) = kserve_predictor()["containers"]
    return c


def test_renders_one_inferenceservice_in_the_namespace() -> None:
    (service,) = rendered("kserve")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["namespace"] == "centermask"
    assert service["metadata"]["labels"]["app.kubernetes.io/part-of"] == "centermask-serve"


def test_a_custom_container_predictor_that_speaks_v2() -> None:
    predictor = kserve_predictor()
    assert set(predictor) - KSERVE_PREDICTOR_FIELDS, "the predictor embeds a pod spec"
    assert not {"model", "pytorch", "triton", "onnx"} & set(predictor), "a custom container, not a runtime"
    c = container()
    # KServe takes a custom predictor's protocol from the PROTOCOL variable of its container, named so.
    assert c["name"] == "kserve-container"
    env = {e["name"]: e for e in c["env"]}
    assert env["PROTOCOL"]["value"] == "v2"
    assert c["image"] == "registry.example.com/centermask-serve:0.1.0"


def test_probes_use_the_protocols_health_endpoints() -> None:
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (
        c["startupProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    )
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    startup = c["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600, "model load and warm-up"


def test_gpu_scheduling_and_graceful_shutdown() -> None:
    predictor = kserve_predictor()
    c = container()
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and "memory" in c["resources"]["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    env = {e["name"]: e for e in c["env"]}
    assert env["CENTERMASK_DEVICE"]["value"] == "cuda"
    sleep = float(c["lifecycle"]["preStop"]["exec"]["command"][2].split("(")[1].rstrip(")"))
    drain = float(env["CENTERMASK_DRAIN_TIMEOUT_S"]["value"])
    assert predictor["terminationGracePeriodSeconds"] >= sleep + drain + 10


def test_raw_deployment_mode_with_bounded_replicas() -> None:
    service = find(rendered("kserve"), "InferenceService")
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = kserve_predictor()
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] in ("cpu", "memory") and 0 < predictor["scaleTarget"] <= 100


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_the_pod_it_describes_validates_strictly(version: str | None) -> None:
    validator = tool("kubernetes-validate")
    render("kserve")  # skips without kustomize
    pod_spec = {key: value for key, value in kserve_predictor().items() if key not in KSERVE_PREDICTOR_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "centermask-predictor"}, "spec": pod_spec}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(pod, f)
    try:
        proc = run([validator, "--strict", *(["-k", version] if version else []), f.name])
    finally:
        Path(f.name).unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "passed for resource pod/" in output.lower(), output


# --------------------------------------------------------------------------------------------------
# k8s/kserve-grpc: the same InferenceService, reached over gRPC


def test_the_grpc_variant_declares_the_grpc_port_as_h2c() -> None:
    (service,) = rendered("kserve-grpc")
    assert service["kind"] == "InferenceService" and service["metadata"]["name"] == "centermask-grpc"
    assert service["metadata"]["namespace"] == "centermask"
    predictor = kserve_predictor("kserve-grpc")
    (c,) = predictor["containers"]
    # KServe routes a predictor port named h2c as gRPC (plaintext HTTP/2); it takes one port per predictor.
    assert c["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PROTOCOL"] == "v2" and env["CENTERMASK_GRPC_PORT"] == "8001"
    # The probes stay HTTP, by port number: the container serves 8000 without declaring it here.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == int(env["CENTERMASK_PORT"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Everything else is k8s/kserve's.
    http = kserve_predictor()
    assert {k: v for k, v in predictor.items() if k != "containers"} == {
        k: v for k, v in http.items() if k != "containers"
    }


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_the_grpc_variants_pod_validates_strictly(version: str | None) -> None:
    validator = tool("kubernetes-validate")
    render("kserve-grpc")  # skips without kustomize
    spec = kserve_predictor("kserve-grpc")
    pod_spec = {key: value for key, value in spec.items() if key not in KSERVE_PREDICTOR_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "centermask-grpc"}, "spec": pod_spec}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(pod, f)
    try:
        proc = run([validator, "--strict", *(["-k", version] if version else []), f.name])
    finally:
        Path(f.name).unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "passed for resource pod/" in output.lower(), output
