"""What a newcomer meets first: the startup log, `--help`, and example images the bundled model knows."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centermask_client import Client
from service.openapi import EXAMPLES_DIR, response_example
from service.server import main
from service.settings import Settings
from tests.helpers import TINY_SERVER_KEY, LiveServer
from training.data.shapes import SHAPE_CLASSES
from training.examples import EXAMPLES


def log_entries(server: LiveServer) -> list[dict]:
    """The server's JSON log lines so far; the server is shared and may be writing its last line as we read."""
    *complete, _partial = server.log.read_text().split("\n")
    return [json.loads(line) for line in complete if line.startswith("{")]


def test_startup_says_what_it_does_and_ends_with_one_ready_line(tiny_server: LiveServer) -> None:
    entries = log_entries(tiny_server)
    messages = [entry["message"] for entry in entries]
    assert messages.index("loading the model") < messages.index("model loaded") < messages.index("ready")
    warm_up = [entry for entry in entries if entry["message"] == "warm-up"]
    assert [(e["batch_size"], e["of"]) for e in warm_up] == [(1, 2), (2, 2)]
    [ready] = [entry for entry in entries if entry["message"] == "ready"]
    assert ready["page"] == f"{tiny_server.url}/" and ready["docs"] == f"{tiny_server.url}/docs"
    assert ready["settings"]["max_batch_size"] == 2 and ready["settings"]["api_key"] == "set"
    assert set(ready["settings"]) == set(Settings.model_fields)
    assert TINY_SERVER_KEY not in tiny_server.log.read_text()


def test_help_names_every_flag_with_its_kind_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')} " in text, name
        assert field.description and field.description.split()[0] in text, name
    assert len(re.findall(r"\(default:\s", text)) == len(Settings.model_fields)
    for internal in ("{Path,null}", "SecretStr", "null", "{str,null}"):
        assert internal not in text
    for flag in ("--weights PATH", "--request-timeout-s SECONDS", "--max-batch-delay-ms MILLISECONDS",
                 "--max-image-bytes BYTES", "--device {auto,cpu,cuda,cuda:N}", "--api-key SECRET"):  # fmt: skip
        assert flag in text


def test_the_shipped_examples_are_the_generated_ones() -> None:
    for example in EXAMPLES:
        shipped = np.asarray(Image.open(EXAMPLES_DIR / example.file_name).convert("RGB"))
        np.testing.assert_array_equal(shipped, example.render().image)
        assert (EXAMPLES_DIR / example.file_name).stat().st_size < 20_000
    assert response_example()["file"] == EXAMPLES[0].file_name


def test_the_bundled_model_finds_every_shape_of_the_examples(bundled_server: LiveServer) -> None:
    with Client(bundled_server.url) as client:
        for example in EXAMPLES:
            scene = example.render()
            result = client.segment(EXAMPLES_DIR / example.file_name)
            masks = [instance.mask_array() for instance in result.instances]
            for drawn in scene.objects:
                truth = drawn.visible_mask
                ious = [(m & truth).sum() / (m | truth).sum() for m in masks]
                # The object's detection is the best-scoring one on it (instances come best first).
                found = next((i for i, iou in enumerate(ious) if iou >= 0.5), None)
                name = SHAPE_CLASSES[drawn.shape.class_id]
                assert found is not None, f"{example.file_name}: nothing on the {name}"
                assert result.instances[found].class_name == name and ious[found] >= 0.8


REPO = Path(__file__).resolve().parents[2]


def test_the_sample_answers_in_the_docs_name_the_bundled_model_version(bundled_server: LiveServer) -> None:
    """README and api.md show `/segment` answers of the bundled model; a retrained model changes its version."""
    import httpx

    version = httpx.get(f"{bundled_server.url}/v1/model").json()["model_version"]
    for page in (REPO / "README.md", REPO / "docs" / "api.md"):
        shown = set(
            re.findall(r'"model": "centermask_lite[^"]*",\s*"model_version": "([0-9a-f]+)"', page.read_text())
        )
        assert shown == {version}, f"{page.name} shows model_version {shown}, the bundled model is {version}"


def test_every_setting_is_documented() -> None:
    page = (REPO / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`CENTERMASK_{name.upper()}`" in page, name


def test_the_readme_quick_start_names_what_exists() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install ./clients/python -e . && centermask-serve" in readme
    test_command = 'pip install -e ./clients/python -e ".[test,deploy]" && mypy && python -m pytest'
    assert test_command in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet --disable-pip-version-check -e ./clients/python -e ".[test,deploy]"' in ci
    assert "\nmypy\n" in ci and "\npython -m pytest" in ci
    assert "service/static/examples/shapes-1.png" in readme and "http://localhost:8000/" in readme
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not link docs/{page.name}"
