"""k8s/bulk: the RayJob renders with kustomize, every pod it describes validates strictly, its entrypoint is a
`centermask-bulk` command this code accepts, and it is shaped as a resumable GPU job must be; docker/Dockerfile.bulk
builds the image it runs.

No schema validation of the RayJob itself: kubernetes-validate has no schema for KubeRay's CRD and no pip
package ships one (the manifest was checked once against KubeRay's own CRD, ray-operator/config/crd/bases). As
for KServe, the pods it describes (the head's and each worker group's template) are validated as Pods, and the
RayJob's own fields are checked here.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DOCKER, K8S_VERSIONS, REPO, dockerfile_instructions, find, render, rendered, run, tool

DOCKERFILE_BULK = DOCKER / "Dockerfile.bulk"


def rayjob() -> dict[str, Any]:
    return find(rendered("bulk"), "RayJob", "centermask-bulk")


def templates() -> dict[str, dict[str, Any]]:
    """Pod template of the head ("head") and of each worker group (by its name)."""
    cluster = rayjob()["spec"]["rayClusterSpec"]
    found = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        found[group["groupName"]] = group["template"]
    return found


def entrypoint() -> Any:
    """The entrypoint parsed by centermask-bulk's own parser."""
    pytest.importorskip("pyarrow", reason="bulk needs the [bulk] extra")
    from bulk.cli import parser

    words = shlex.split(rayjob()["spec"]["entrypoint"])
    assert words[0] == "centermask-bulk"
    return parser().parse_args(words[1:])


def test_renders_one_rayjob_in_the_namespace() -> None:
    (job,) = rendered("bulk")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["namespace"] == "centermask"
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "centermask-serve"


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_every_pod_it_describes_validates_strictly(version: str | None) -> None:
    validator = tool("kubernetes-validate")
    for name, template in templates().items():
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"ray-{name}"},
            "spec": template["spec"],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(pod, f)
        try:
            proc = run([validator, "--strict", *(["-k", version] if version else []), f.name])
        finally:
            Path(f.name).unlink()
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "passed for resource pod/" in output.lower(), (name, output)


def test_the_entrypoint_is_a_command_centermask_bulk_accepts() -> None:
    from model.inference.options import from_arguments

    args = entrypoint()
    options = from_arguments(args)
    assert options.device == "cuda" and args.address == "auto"
    # Retries resume from the output: it must outlive the cluster, so an object store, not a pod's disk.
    assert re.match(r"^(s3|gs|gcs|az|abfs)://", args.output), args.output
    assert all(re.match(r"^[a-z0-9]+://", given) for given in args.inputs)


def test_gpu_workers_and_a_head_that_only_drives() -> None:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no GPU worker group"
    args = entrypoint()
    for group in gpu_groups:
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        resources = container["resources"]
        assert resources["limits"] == resources["requests"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # The reading tasks asked for fit on the CPUs the GPU workers keep beside their actors.
    spare = sum(
        g["replicas"] * (int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) - 1)
        for g in gpu_groups
    )
    assert args.read_tasks is not None and args.read_tasks <= spare


def test_the_weights_are_mounted_wherever_they_are_read() -> None:
    args = entrypoint()
    assert args.weights is not None
    for name, template in templates().items():
        (container,) = template["spec"]["containers"]
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(str(args.weights).startswith(m.rstrip("/") + "/") for m in mounts), name


def test_pods_have_shared_memory_a_writable_tmp_and_no_privileges() -> None:
    for name, template in templates().items():
        spec = template["spec"]
        (container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        # Ray's object store: /dev/shm in memory, not a container's 64 MiB default.
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", name
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["image"] == "registry.example.com/centermask-bulk:0.1.0", name


def test_a_failed_job_is_retried_and_cleaned_up() -> None:
    spec = rayjob()["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0


def test_one_ray_version_everywhere() -> None:
    """KubeRay's rayVersion, the image's Ray and the [bulk] extra agree."""
    render("bulk")  # skips without kustomize
    version = rayjob()["spec"]["rayClusterSpec"]["rayVersion"]
    args = dict(
        a.split("=", 1) for i, a in dockerfile_instructions(DOCKERFILE_BULK) if i == "ARG" and "=" in a
    )
    assert re.fullmatch(rf"rayproject/ray:{re.escape(version)}-py311-\w+", args["RAY_IMAGE"]), args[
        "RAY_IMAGE"
    ]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bulk"]
    (pin,) = [e for e in extras if e.startswith("ray[")]
    minimum = re.fullmatch(r"ray\[data\]>=([\d.]+)", pin)
    assert minimum, pin

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    assert key(minimum.group(1)) <= key(version)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {
        name: d.partition("==")[2]
        for d in dependencies
        for name in ("torch", "torchvision")
        if d.startswith(f"{name}==")
    }
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == (pins["torch"], pins["torchvision"])


def test_the_bulk_image_copies_what_exists() -> None:
    """Everything Dockerfile.bulk COPYs is in the repository (test_docker.py: and in the build context)."""
    for instruction, args in dockerfile_instructions(DOCKERFILE_BULK):
        if instruction == "COPY":
            for source in [word for word in args.split()[:-1] if not word.startswith("--")]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
