"""k8s/: each overlay renders with kustomize, passes `kubernetes-validate --strict`, and is shaped
the way a GPU inference service must be (probes, draining, security, GPU scheduling, autoscaling).

ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: kubernetes-validate ships no schema
for them (and no pip package ships the operator's CRD schemas), so they are skipped by the schema
validation and checked structurally here instead (selectors, ports, rules identical to compose's).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    ALERTS,
    CRD_KINDS,
    K8S,
    K8S_VERSIONS,
    OVERLAYS,
    REPO,
    adapter_rules,
    configmap_data,
    dockerfile_stages,
    find,
    load_yaml,
    render,
    rendered,
    run,
    served_metric_name,
    tool,
)

SELECTOR = {"app.kubernetes.io/name": "centermask-serve", "app.kubernetes.io/instance": "centermask-serve"}


def deployment(overlay: str) -> dict[str, Any]:
    return find(rendered(f"overlays/{overlay}"), "Deployment", "centermask-serve")


def pod_spec(overlay: str) -> dict[str, Any]:
    return deployment(overlay)["spec"]["template"]["spec"]


def container(overlay: str) -> dict[str, Any]:
    (c,) = pod_spec(overlay)["containers"]
    return c


def env(overlay: str) -> dict[str, Any]:
    return {e["name"]: e for e in container(overlay).get("env", [])}


# --------------------------------------------------------------------------------------------------
# rendering and schema validation


@pytest.mark.parametrize("directory", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_kustomize_renders(directory: str) -> None:
    docs = rendered(directory)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceMonitor",
        ]
    )


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str, version: str | None) -> None:
    validator = tool("kubernetes-validate")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(render(f"overlays/{overlay}"))
    try:
        args = [validator, "--strict"]
        if version:
            args += ["-k", version]
        proc = run([*args, f.name])
    finally:
        Path(f.name).unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output, output
    # Only the CRDs may be skipped for want of a schema; everything else must have been validated.
    skipped = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert skipped <= CRD_KINDS, output
    passed = set(re.findall(r"passed for resource (\w+)/", output))
    assert passed == {"configmap", "service", "deployment", "poddisruptionbudget", "horizontalpodautoscaler"}


def test_overlays_set_the_namespace_and_image() -> None:
    for overlay, tag in (("gpu", "0.1.0"), ("cpu", "0.1.0-cpu")):
        for doc in rendered(f"overlays/{overlay}"):
            assert doc["metadata"].get("namespace") == "centermask", doc["kind"]
        image = container(overlay)["image"]
        assert image.endswith(f"/centermask-serve:{tag}"), image


def test_labels_follow_app_kubernetes_io() -> None:
    for overlay in OVERLAYS:
        for doc in rendered(f"overlays/{overlay}"):
            labels = doc["metadata"]["labels"]
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/version"):
                assert key in labels, (doc["kind"], key)
        template_labels = deployment(overlay)["spec"]["template"]["metadata"]["labels"]
        assert SELECTOR.items() <= template_labels.items()
        assert deployment(overlay)["spec"]["selector"]["matchLabels"] == SELECTOR


# --------------------------------------------------------------------------------------------------
# the Deployment


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    c = container(overlay)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Liveness must not depend on the model: a slow load or a full queue is no reason to restart.
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = c["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup["failureThreshold"] * startup.get(
        "periodSeconds", 10
    )
    assert budget >= 600, f"startup budget {budget}s is too short for model loading and warm-up"
    # A rollout is not declared failed before a pod could even have finished loading.
    assert deployment(overlay)["spec"]["progressDeadlineSeconds"] > budget


def prestop_sleep_seconds(c: dict[str, Any]) -> float:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], "the image has no shell: preStop must exec python"
    m = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert m, command
    return float(m.group(1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_budget(overlay: str) -> None:
    c = container(overlay)
    sleep = prestop_sleep_seconds(c)
    assert sleep >= 5
    drain = float(configmap_data(rendered(f"overlays/{overlay}"))["CENTERMASK_DRAIN_TIMEOUT_S"])
    grace = pod_spec(overlay)["terminationGracePeriodSeconds"]
    # The grace period covers the preStop hook and the drain after SIGTERM, with margin.
    assert grace >= sleep + drain + 10, (grace, sleep, drain)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(overlay: str) -> None:
    pod = pod_spec(overlay)
    c = container(overlay)
    image_user = [a for i, a in dockerfile_stages(REPO / "docker" / "Dockerfile")[-1] if i == "USER"][-1]
    uid, _, gid = image_user.partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # Kubernetes' service-link variables would put CENTERMASK_*-prefixed names into the environment.
    assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_on_the_tmp_emptydir(overlay: str) -> None:
    pod = pod_spec(overlay)
    c = container(overlay)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    e = env(overlay)
    for var in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        assert e[var]["value"] == "/tmp" or e[var]["value"].startswith("/tmp/"), var


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap_and_optional_secret(overlay: str) -> None:
    docs = rendered(f"overlays/{overlay}")
    data = configmap_data(docs)
    assert data["CENTERMASK_DEVICE"] == {"gpu": "cuda", "gpu-shared": "cuda", "cpu": "cpu"}[overlay]
    assert "CENTERMASK_API_KEY" not in data
    ref = env(overlay)["CENTERMASK_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    example = load_yaml(K8S / "base" / "secret-api-key.example.yaml")
    assert example["kind"] == "Secret"
    assert ref["name"] == example["metadata"]["name"]
    assert ref["key"] in example["stringData"]
    # The example is not applied by default.
    assert not any(d["kind"] == "Secret" for d in docs)
    base_resources = load_yaml(K8S / "base" / "kustomization.yaml")["resources"]
    assert "secret-api-key.example.yaml" not in base_resources


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_thread_counts_follow_the_cpu_resources(overlay: str) -> None:
    """torch's threads follow the guaranteed CPUs, the worker pool the CPUs the pod may use."""
    c = container(overlay)
    assert "cpu" in c["resources"]["requests"] and "cpu" in c["resources"]["limits"]
    for var, resource in (("OMP_NUM_THREADS", "requests.cpu"), ("CENTERMASK_CPU_WORKERS", "limits.cpu")):
        ref = env(overlay)[var]["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == resource and ref["containerName"] == c["name"]


def test_the_gpu_pod_has_the_cpus_its_pre_and_postprocessing_need() -> None:
    resources = container("gpu")["resources"]
    assert (
        int(resources["requests"]["cpu"]) >= 8 and resources["limits"]["cpu"] == resources["requests"]["cpu"]
    )


def test_two_pods_share_a_gpu_with_the_cpus_of_one_between_them() -> None:
    """gpu-shared: each pod asks for one time-sliced GPU share and half the one-pod overlay's CPUs; the
    device plugin's config beside it advertises each GPU twice; the HPA's floor keeps two GPUs busy."""
    shared, whole = container("gpu-shared")["resources"], container("gpu")["resources"]
    assert shared["limits"]["nvidia.com/gpu"] == shared["requests"]["nvidia.com/gpu"] == 1
    assert 2 * int(shared["requests"]["cpu"]) == int(whole["requests"]["cpu"])
    assert shared["limits"]["cpu"] == shared["requests"]["cpu"]
    assert pod_spec("gpu-shared")["nodeSelector"] == pod_spec("gpu")["nodeSelector"]
    config = load_yaml(K8S / "overlays/gpu-shared/time-slicing.yaml")
    sharing = yaml.safe_load(config["data"]["any"])["sharing"]["timeSlicing"]
    assert sharing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]
    assert sharing["renameByDefault"] is False and sharing["failRequestsGreaterThanOne"] is True
    hpa = find(rendered("overlays/gpu-shared"), "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["minReplicas"]
        == 2 * find(rendered("overlays/gpu"), "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topology_spread_across_nodes(overlay: str) -> None:
    (constraint,) = pod_spec(overlay)["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["labelSelector"]["matchLabels"] == SELECTOR


def test_gpu_overlay_schedules_on_a_gpu() -> None:
    c = container("gpu")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "memory" in c["resources"]["limits"]
    pod = pod_spec("gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_cpu_overlay_has_no_gpu_and_sized_cpu() -> None:
    text = render("overlays/cpu")
    assert "nvidia.com" not in text
    c = container("cpu")
    assert float(c["resources"]["requests"]["cpu"]) >= 2
    assert c["resources"]["requests"] == c["resources"]["limits"]


# --------------------------------------------------------------------------------------------------
# Service, PDB, HPA, ServiceMonitor, PrometheusRule


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_routes_to_the_http_and_grpc_ports(overlay: str) -> None:
    docs = rendered(f"overlays/{overlay}")
    service = find(docs, "Service", "centermask-serve")
    assert service["spec"]["selector"] == SELECTOR
    http, grpc = service["spec"]["ports"]
    names = {p["name"] for p in container(overlay)["ports"]}
    assert http["targetPort"] in names and http["name"] == "http"
    # gRPC is plaintext HTTP/2: appProtocol tells meshes and Gateways to route it so.
    assert grpc["targetPort"] in names and grpc["name"] == "grpc"
    assert grpc["appProtocol"] == "kubernetes.io/h2c"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb(overlay: str) -> None:
    pdb = find(rendered(f"overlays/{overlay}"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_the_service_metrics(overlay: str) -> None:
    docs = rendered(f"overlays/{overlay}")
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment(overlay)["metadata"]["name"])
    assert "replicas" not in deployment(overlay)["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    served = {served_metric_name(rule) for rule in adapter_rules()}
    metrics = hpa["spec"]["metrics"]
    assert metrics
    for metric in metrics:
        # Not CPU/memory (the work is on the GPU): per-pod custom metrics from the adapter rules.
        assert metric["type"] == "Pods", metric
        assert metric["pods"]["metric"]["name"] in served
        assert metric["pods"]["target"]["type"] == "AverageValue"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_adapter_rules_are_rates_per_pod() -> None:
    for rule in adapter_rules():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        query = rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in query and "<<.GroupBy>>" in query
        # A counter is only ever used through rate(); a gauge through a *_over_time average.
        for name in re.findall(r"centermask_\w+", query):
            if name.endswith(("_sum", "_count", "_total", "_bucket")):
                assert re.search(rf"rate\({name}\{{", query), f"{name} is not rated in {query}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_service(overlay: str) -> None:
    docs = rendered(f"overlays/{overlay}")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = find(docs, "Service", "centermask-serve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The alert rules select job="centermask-serve": the ServiceMonitor's default job is the Service's
    # name (no jobLabel override).
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "centermask-serve"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheusrule_has_the_compose_alerts(overlay: str) -> None:
    rule = find(rendered(f"overlays/{overlay}"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]


# --------------------------------------------------------------------------------------------------
# the model repository overlay


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_the_repository_overlay_validates_strictly(version: str | None) -> None:
    validator = tool("kubernetes-validate")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(render("overlays/repository"))
    try:
        proc = run([validator, "--strict", *(["-k", version] if version else []), f.name])
    finally:
        Path(f.name).unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in output, output
    assert "passed for resource persistentvolumeclaim/" in output, output


def test_the_repository_overlay_mounts_the_models_read_only_with_the_admin_key_from_a_secret() -> None:
    docs = rendered("overlays/repository")
    pod = find(docs, "Deployment", "centermask-serve")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    data = configmap_data(docs)
    assert data["CENTERMASK_MODEL_REPOSITORY"] == "/models" and data["CENTERMASK_DEVICE"] == "cuda"
    assert "CENTERMASK_WEIGHTS" not in data and "CENTERMASK_ADMIN_KEY" not in data
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts, "the overlay adds, never replaces"
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]
    pvc = find(docs, "PersistentVolumeClaim", claim["claimName"])
    assert claim["readOnly"] is True and pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pvc["metadata"]["namespace"] == "centermask"
    env_vars = {e["name"]: e for e in c["env"]}
    admin = env_vars["CENTERMASK_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    api = env_vars["CENTERMASK_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin["optional"] is True and admin["name"] != api["name"]
    example = load_yaml(K8S / "base" / "secret-admin-key.example.yaml")
    assert (example["kind"], example["metadata"]["name"]) == ("Secret", admin["name"])
    assert admin["key"] in example["stringData"]
    assert not any(d["kind"] == "Secret" for d in docs)
    assert "secret-admin-key.example.yaml" not in load_yaml(K8S / "base" / "kustomization.yaml")["resources"]
