"""The client as its own distribution: its wheel, built from clients/python, installs into a fresh virtual
environment without torch (nor anything else of the server) and segments images on a live service."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.client.test_cli import write_png
from tests.helpers import REPO, TINY_SERVER_KEY, LiveServer, clean_environment

CLIENT = REPO / "clients" / "python"
# Installing the wheel's dependencies (httpx, numpy, pillow, pydantic, tqdm) from the index or pip's cache.
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client-wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    source = out / "source"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(source)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("centermask_client-*.whl")
    return built


def alone(**settings: str) -> dict[str, str]:
    """The environment of the fresh venv's commands: no PYTHONPATH, which would lend them the checkout's
    packages (the server's among them) and hide a client that needs one."""
    environment = clean_environment(**settings)
    environment.pop("PYTHONPATH", None)
    return environment


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=alone(),
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return root


def test_the_wheel_holds_the_client_alone(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"centermask_client"}
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = [requirement for requirement in requires if "extra ==" not in requirement]
    assert sorted(requirement.split(">")[0].split("=")[0] for requirement in base) == [
        "httpx", "numpy", "pillow", "pydantic", "tqdm",
    ]  # fmt: skip
    # The optional extras: each for the calls that need it, nothing in the default install.
    extras = {
        requirement.split(">")[0].strip(): requirement.split("extra ==")[1].strip(" '\"")
        for requirement in requires
        if "extra ==" in requirement
    }
    assert extras == {"websockets": "stream", "av": "video"}


def test_installed_alone_it_segments_on_a_live_service(
    venv: Path, tiny_server: LiveServer, tmp_path: Path
) -> None:
    python = venv / "bin" / "python"
    image = write_png(tmp_path / "images" / "a.png", 3, 96, 128)
    program = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        from centermask_client import Client
        for name in ("torch", "torchvision", "fastapi", "model", "service", "training"):
            assert importlib.util.find_spec(name) is None, name + " is installed"
        with Client({tiny_server.url!r}, api_key={TINY_SERVER_KEY!r}) as client:
            result = client.segment({str(image)!r}, score_threshold=0)
            masks = [instance.mask_array() for instance in result.instances]
        print(json.dumps({{"instances": len(result.instances), "shapes": sorted({{m.shape for m in masks}})}}))
        """
    )
    # Run from the temporary folder: the checkout's own packages must not be found through the working directory.
    ran = subprocess.run(
        [str(python), "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=alone(),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["instances"] > 0 and answer["shapes"] == [[96, 128]]

    out = tmp_path / "out"
    command = subprocess.run(
        [str(venv / "bin" / "centermask"), "segment", str(image.parent), "--url", tiny_server.url,
         "--out-dir", str(out), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=alone(CENTERMASK_API_KEY=TINY_SERVER_KEY),
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    assert json.loads((out / "a.json").read_text())["width"] == 128
