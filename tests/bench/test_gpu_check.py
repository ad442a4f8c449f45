"""The GPU window's script cannot rot between windows: its rehearsal on the CPU runs every step the way a GPU
machine runs it, and its wheel kit refuses a folder the GPU machine would choke on."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bench.gpu_check import cuda_test_files
from bench.gpu_wheels import check, read_lock
from tests.helpers import REPO, clean_environment

STEPS = ["tests", "model", "graphs", "roofline", "load"]
# What comes back from a device call: at most 8 files.
FILES = {"summary.json", "steps.log", "tests.xml", "model.json", "graphs.json", "roofline.json", "load.json"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    process = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--rehearse"],
        cwd=REPO,
        env=clean_environment(OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return process, out


def test_the_rehearsal_runs_every_step(rehearsal: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    process, out = rehearsal
    log = (out / "steps.log").read_text()
    assert process.returncode == 0, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "passed" and summary["mode"] == "rehearse"
    assert [step["name"] for step in summary["steps"]] == STEPS
    assert summary["wheels"]["status"] == "passed" and summary["wheels"]["count"] == len(read_lock())
    assert summary["preflight"]["problems"] == []
    assert {path.name for path in out.iterdir()} == FILES
    for name in ("model", "graphs", "roofline", "load"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["complete"] and result["rows"], name


def test_the_rehearsal_collects_the_cuda_tests(
    rehearsal: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = rehearsal
    suite = ElementTree.parse(out / "tests.xml").getroot().find("testsuite")
    assert suite is not None
    # Collected without an error, skipped on the CPU: the GPU machine would run them.
    assert int(suite.get("errors", "0")) == 0 and int(suite.get("failures", "0")) == 0
    assert int(suite.get("tests", "0")) >= 10 and suite.get("skipped") == suite.get("tests")
    assert "tests/model/test_cuda.py" in cuda_test_files()


def fake_wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        metadata = "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
        wheel.writestr(
            f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n{metadata}"
        )


def test_the_wheel_check_finds_what_would_break_the_install(tmp_path: Path) -> None:
    pins = read_lock()
    for name, version in pins.items():
        fake_wheel(tmp_path, name.replace("-", "_"), version, "numpy>=1")
    assert check(tmp_path) == []
    fake_wheel(tmp_path, "fastapi", "0.1.0")  # a second version: pip would refuse everything
    fake_wheel(tmp_path, "leftover", "1.0", "unheard-of-package")
    (tmp_path / f"orjson-{pins['orjson']}-py3-none-any.whl").unlink()
    problems = check(tmp_path)
    assert any(problem.startswith("fastapi: 2 wheels") for problem in problems)
    assert f"orjson=={pins['orjson']} is missing" in problems
    assert "leftover is not in the lock" in problems
    assert any("requires unheard-of-package" in problem for problem in problems)
