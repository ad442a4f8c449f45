"""docker/Dockerfile and .dockerignore: hadolint, and the properties the deployment relies on."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from .conftest import DOCKERFILES, REPO, dockerfile_instructions, dockerfile_stages, run, tool

DOCKERFILE = REPO / "docker" / "Dockerfile"
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}


def test_there_is_a_dockerfile() -> None:
    assert DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    hadolint = tool("hadolint")
    proc = run([hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)])
    assert proc.returncode == 0, f"hadolint findings in {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages(DOCKERFILE)[-1]


def args_of(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [a for i, a in stage if i == instruction]


def test_multi_stage_with_the_venv_copied_from_the_builder() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2
    names = [re.search(r"\bAS\s+(\S+)", args, re.I) for _, args in (s[0] for s in stages)]
    assert names[0] and names[0].group(1) == "builder"
    copies = args_of(final_stage(), "COPY")
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies), copies


def test_final_stage_installs_nothing() -> None:
    """No compilers, package managers or pip caches in the runtime image: it only copies the venv."""
    for command in args_of(final_stage(), "RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|apk|gcc|make)\b", command), command
    builder_runs = " ".join(args_of(dockerfile_stages(DOCKERFILE)[0], "RUN"))
    assert "--no-cache-dir" in builder_runs
    assert "pip uninstall --yes pip" in builder_runs


def test_runs_as_a_numeric_non_root_user() -> None:
    users = args_of(final_stage(), "USER")
    assert users, "final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_exec_form_entrypoint_runs_the_console_script() -> None:
    entrypoints = args_of(final_stage(), "ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ["centermask-serve"]
    for cmd in args_of(final_stage(), "CMD"):
        exec_form(cmd)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "centermask-serve" in scripts


def test_stopsignal_expose_and_labels() -> None:
    stage = final_stage()
    assert args_of(stage, "STOPSIGNAL") == ["SIGTERM"]
    assert args_of(stage, "EXPOSE") == ["8000"]
    labels = " ".join(args_of(stage, "LABEL"))
    found = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    assert found >= OCI_LABELS, OCI_LABELS - found


def test_healthcheck_is_liveness_in_exec_form() -> None:
    healthchecks = args_of(final_stage(), "HEALTHCHECK")
    assert len(healthchecks) == 1
    options, _, command = healthchecks[0].partition("CMD ")
    argv = exec_form(command)
    assert argv[0] == "python", "the image has no curl/wget: python is the HTTP client"
    assert "/healthz" in argv[-1]
    assert "--start-period" in options


def test_caches_are_redirected_under_tmp() -> None:
    env = " ".join(args_of(final_stage(), "ENV"))
    for var in ("XDG_CACHE_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        m = re.search(rf"\b{var}=(\S+)", env)
        assert m and m.group(1).startswith("/tmp/"), var
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_torch_pins_match_pyproject() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(
        re.fullmatch(r"(torch|torchvision)==(\S+)", d).groups()
        for d in deps
        if re.match(r"torch(vision)?==", d)
    )
    args = dict(a.split("=", 1) for i, a in dockerfile_instructions(DOCKERFILE) if i == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]


def test_copied_sources_exist() -> None:
    """Everything the builder COPYs from the context is in the repository (else the build fails)."""
    for instruction, args in dockerfile_instructions(DOCKERFILE):
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


# --------------------------------------------------------------------------------------------------
# .dockerignore, evaluated with Docker's rules: the last matching pattern decides, a pattern also
# matches everything below a matching directory, `!` re-includes, `**` spans directories.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1 : j].replace("!", "^", 1) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            result = not negated
    return result


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "service/app.py",
        "service/static/index.html",
        "service/static/examples/shapes-1.png",
        "clients/python/pyproject.toml",
        "clients/python/centermask_client/schemas.py",
        "model/predict.py",
        "bulk/pipeline.py",
        "model/weights/calibration/scene-0.png",
        "model/weights/default.pth",
        "model/configs/lite.json",
    ],
)
def test_dockerignore_keeps_the_package(path: str) -> None:
    assert not ignored(path, dockerignore_rules())


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        "tests/deploy/test_docker.py",
        "bench/run.py",
        "docs/deploy.md",
        "k8s/base/deployment.yaml",
        "docker-compose.yml",
        ".venv/bin/python",
        "runs/exp1/model.pth",
        "shared/reference/x.npz",
        "service/__pycache__/app.cpython-311.pyc",
        "model/x.egg-info/PKG-INFO",
        "training/train.py",
        "clients/python/build/lib/x.py",
    ],
)
def test_dockerignore_drops_everything_else(path: str) -> None:
    assert ignored(path, dockerignore_rules())


def test_bundled_default_weights_go_into_the_image() -> None:
    """The default model (`CENTERMASK_WEIGHTS` unset) is package data that the build context keeps."""
    weights = pytest.importorskip("model.weights", reason="model/ is not importable")
    package_dir = Path(weights.__file__).parents[1]
    relative = weights.DEFAULT_WEIGHTS.relative_to(package_dir)
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "model"
    ]
    assert any(fnmatch.fnmatch(str(relative), g) for g in globs), f"{relative} is not package data ({globs})"
    assert not ignored(f"model/{relative}", dockerignore_rules())
    assert (REPO / "model" / relative).is_file(), f"the bundled default weights model/{relative} are missing"
