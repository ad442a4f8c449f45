"""docker-compose.yml: valid under `docker-compose config` (default and `cpu` profile), GPU by default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, compose_config, dockerfile_instructions, load_yaml, parse_duration, run, tool

SERVICE_GPU = "centermask"
SERVICE_CPU = "centermask-cpu"


def test_default_services() -> None:
    """`docker compose up` starts the GPU service with Prometheus and Grafana, not the CPU variant."""
    assert set(compose_config()["services"]) == {SERVICE_GPU, "prometheus", "grafana"}


def test_cpu_profile_adds_the_cpu_service() -> None:
    services = compose_config("cpu")["services"]
    assert set(services) == {SERVICE_GPU, SERVICE_CPU, "prometheus", "grafana"}
    assert services[SERVICE_CPU]["profiles"] == ["cpu"]


def test_gpu_service_reserves_one_nvidia_gpu() -> None:
    service = compose_config()["services"][SERVICE_GPU]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["environment"]["CENTERMASK_DEVICE"] == "cuda"
    assert "profiles" not in service


def test_cpu_service_has_no_gpu_and_the_scrape_alias() -> None:
    service = compose_config("cpu")["services"][SERVICE_CPU]
    assert "devices" not in service.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert service["environment"]["CENTERMASK_DEVICE"] == "cpu"
    assert service["build"]["args"]["TORCH_VARIANT"] == "cpu"
    # Prometheus scrapes centermask:8000 whichever variant runs.
    assert "centermask" in service["networks"]["default"]["aliases"]


@pytest.mark.parametrize("name", [SERVICE_GPU, SERVICE_CPU])
def test_service_builds_from_the_dockerfile(name: str) -> None:
    build = compose_config("cpu")["services"][name]["build"]
    assert Path(build["context"]) == REPO
    dockerfile = REPO / build["dockerfile"]
    assert dockerfile.is_file()
    declared = {a.split("=", 1)[0] for i, a in dockerfile_instructions(dockerfile) if i == "ARG"}
    assert set(build.get("args", {})) <= declared, set(build["args"]) - declared


@pytest.mark.parametrize("name", [SERVICE_GPU, SERVICE_CPU])
def test_stop_grace_period_exceeds_the_drain_timeout(name: str) -> None:
    service = compose_config("cpu")["services"][name]
    drain = float(service["environment"]["CENTERMASK_DRAIN_TIMEOUT_S"])
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert parse_duration(service["stop_grace_period"]) >= drain + 10


@pytest.mark.parametrize("name", [SERVICE_GPU, SERVICE_CPU])
def test_service_healthcheck_waits_for_readiness(name: str) -> None:
    service = compose_config("cpu")["services"][name]
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and check["test"][1] == "python"
    assert re.search(r"/readyz\b", check["test"][-1])
    # Same model-load budget as the Kubernetes startupProbe.
    assert parse_duration(check["start_period"]) >= 600
    assert [p["target"] for p in service["ports"]] == [8000, 8001]  # HTTP, gRPC


@pytest.mark.parametrize("name", [SERVICE_GPU, SERVICE_CPU])
def test_service_is_hardened(name: str) -> None:
    service = compose_config("cpu")["services"][name]
    assert service["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]


def test_every_service_has_a_healthcheck() -> None:
    for name, service in compose_config("cpu")["services"].items():
        assert service.get("healthcheck", {}).get("test"), name


def test_api_key_is_only_passed_through() -> None:
    """No default key baked into the compose file: unset in the shell means unset in the container."""
    raw = load_yaml(REPO / "docker-compose.yml")
    env = raw["x-centermask-environment"]
    assert env["CENTERMASK_API_KEY"] is None


def bind_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def test_bind_mount_sources_exist() -> None:
    for name, service in compose_config("cpu")["services"].items():
        for volume in bind_mounts(service):
            assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
            assert volume.get("read_only") is True, f"{name}: {volume['target']} should be :ro"


def test_prometheus_config_and_rules_are_mounted_together() -> None:
    prometheus = compose_config()["services"]["prometheus"]
    targets = {v["target"]: Path(v["source"]) for v in bind_mounts(prometheus)}
    config_target = "/etc/prometheus/prometheus.yml"
    assert targets[config_target] == REPO / "docker/prometheus/prometheus.yml"
    assert f"--config.file={config_target}" in prometheus["command"]
    config = load_yaml(targets[config_target])
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_target).parent / rule_file)
        assert in_container in targets, f"rule file {rule_file} is not mounted"
        assert targets[in_container].is_file()


def test_prometheus_scrapes_the_service_by_its_compose_name() -> None:
    config = load_yaml(REPO / "docker/prometheus/prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "centermask-serve")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["centermask:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_mounts_match_the_provisioning() -> None:
    grafana = compose_config()["services"]["grafana"]
    targets = {v["target"]: Path(v["source"]) for v in bind_mounts(grafana)}
    assert targets["/etc/grafana/provisioning"] == REPO / "docker/grafana/provisioning"
    providers = load_yaml(REPO / "docker/grafana/provisioning/dashboards/centermask-serve.yml")["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in targets, f"dashboard provider path {path} is not mounted"
        assert any(targets[path].glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount = next(t for t in targets if home.startswith(t + "/"))
    assert (targets[mount] / home[len(mount) + 1 :]).is_file()
    datasources = load_yaml(REPO / "docker/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    assert "prometheus" in compose_config()["services"]
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_monitoring_ports_bind_to_loopback() -> None:
    """Prometheus and Grafana (default admin password) are not published on every interface."""
    services = compose_config()["services"]
    for name in ("prometheus", "grafana"):
        for port in services[name]["ports"]:
            assert port.get("host_ip") == "127.0.0.1", name


def test_admin_key_is_only_passed_through() -> None:
    env = load_yaml(REPO / "docker-compose.yml")["x-centermask-environment"]
    assert env["CENTERMASK_ADMIN_KEY"] is None


@pytest.mark.parametrize("name", [SERVICE_GPU, SERVICE_CPU])
def test_the_repository_override_mounts_the_models_read_only(name: str) -> None:
    files = ("docker-compose.yml", "docker-compose.repository.yml")
    command = [tool("docker-compose"), *(arg for f in files for arg in ("-f", str(REPO / f)))]
    proc = run([*command, "--profile", "cpu", "config", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    service = json.loads(proc.stdout)["services"][name]
    environment = service["environment"]
    assert environment["CENTERMASK_MODEL_REPOSITORY"] == "/models"
    assert "CENTERMASK_WEIGHTS" not in environment and environment["CENTERMASK_PORT"] == "8000"
    [models] = [volume for volume in service["volumes"] if volume["target"] == "/models"]
    assert models["read_only"] is True and models["source"].endswith("/models")
    assert service["read_only"] is True, "the hardening of docker-compose.yml stays"
