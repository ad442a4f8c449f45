"""The OpenAPI document keeps its promises: schemathesis (its coverage, fuzzing and stateful phases, every
check) against the live service, with an API key and without one, finds no contract failure but those a
static schema cannot know about, listed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from tests.helpers import TINY_SERVER_KEY, LiveServer, clean_environment, live_server

# What a static schema cannot say, and so schemathesis takes for valid:
# - which class names the served model has (they come from its checkpoint): `classes=unicorn` gets 422;
# - that an upload's bytes must be an image, or a video: OpenAPI has "a binary string", so random bytes get
#   400, and an image sent as a video (sniffed from its bytes) gets 415.
# - that an Open Inference Protocol input holds as many images as its shape says, in its data or in as many
#   binary bytes as binary_data_size says (the model's name and version, which reach /v2 now that
#   /v1/models lists them, let schemathesis get that far).
# - that tile_overlap is at most half of tile_size, the request's or the service's: a bound of one parameter
#   by another or by a setting (each has its own range in the schema; the relation is in their descriptions).
KNOWN_EXCEPTIONS = ("unknown class", '"code":"invalid_image"', '"code":"invalid_video"',
                    '"code":"unsupported_media_type"', "base64 strings, one per image",
                    "binary_data_size", "binary tensor holds", "binary BYTES tensor ends",
                    "bytes of binary data follow", "must be at most half of tile_size",
                    "must be at most half of the tile size")  # fmt: skip
EXAMPLES = 12
SEED = 20261206


def schemathesis(server: LiveServer, report: Path, *headers: str) -> list[str]:
    """The failures schemathesis reports against `server` (its messages), after a full run."""
    executable = shutil.which("st", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    if executable is None:
        pytest.skip("schemathesis is not installed (the test extra has it)")
    command = [
        executable, "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
        "--seed", str(SEED), "--workers", "1", "--report", "junit", "--report-junit-path", str(report),
        *(option for header in headers for option in ("--header", header)),
    ]  # fmt: skip
    subprocess.run(
        command, cwd=report.parent, env=clean_environment(), capture_output=True, text=True, timeout=600
    )
    failures = []
    for failure in ElementTree.parse(report).getroot().iter("failure"):
        message = " ".join(filter(None, (failure.get("message"), failure.text)))
        failures.append(message)
    return failures


# - that the binary body of an infer request (application/octet-stream, declared as any bytes) is the
#   protocol's JSON followed by its tensors, the JSON's length in Inference-Header-Content-Length.
KNOWN_TOGETHER = (("Content-Type: application/octet-stream", "/infer", '"code":"invalid_request"'),)


def unexpected(failures: list[str]) -> list[str]:
    return [
        failure[:500]
        for failure in failures
        if not any(known in failure for known in KNOWN_EXCEPTIONS)
        and not any(all(part in failure for part in parts) for parts in KNOWN_TOGETHER)
    ]


def test_the_contract_holds_with_an_api_key(tiny_server: LiveServer, tmp_path: Path) -> None:
    failures = schemathesis(tiny_server, tmp_path / "report.xml", f"X-API-Key: {TINY_SERVER_KEY}")
    assert unexpected(failures) == []


def test_the_contract_holds_without_one(small_weights: Path, tmp_path: Path) -> None:
    flags = ("--weights", str(small_weights), "--max-batch-size", "2", "--cpu-workers", "1")
    with live_server(tmp_path / "server.log", *flags) as server:
        failures = schemathesis(server, tmp_path / "report.xml")
    assert unexpected(failures) == []


def test_the_probes_are_declared_open_and_the_api_keyed(tiny_server: LiveServer) -> None:
    spec = httpx.get(f"{tiny_server.url}/openapi.json").json()
    assert "security" in spec["paths"]["/segment"]["post"]
    assert "security" in spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    for path in ("/healthz", "/readyz", "/metrics", "/v2", "/v2/health/ready"):
        assert "security" not in spec["paths"][path]["get"], path
