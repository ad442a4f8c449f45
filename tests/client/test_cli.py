"""`centermask segment` against the real service (the tiny checkpoint behind an API key)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centermask_client.cli import main
from centermask_client.schemas import SegmentResponse
from tests.helpers import TINY_SERVER_KEY, LiveServer


def write_png(path: Path, seed: int, height: int, width: int) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_API_KEY", TINY_SERVER_KEY)


def test_a_directory_with_a_broken_image(
    tiny_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    write_png(images / "a.png", 0, 96, 128)
    write_png(images / "nested" / "b.png", 1, 80, 100)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("not an image, not sent")
    out = tmp_path / "out"
    status = main(["segment", str(images), "--url", tiny_server.url, "--out-dir", str(out), "--format", "png",
                   "--concurrency", "2", "--no-progress"])  # fmt: skip
    assert status == 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.json", "a.overlay.png", "nested/b.json", "nested/b.overlay.png"]
    result = SegmentResponse.model_validate_json((out / "a.json").read_text())
    assert result.file == "a.png" and len(result.instances) > 0
    assert Image.open(out / "nested" / "b.overlay.png").size == (100, 80)
    errors = capsys.readouterr().err
    assert f"failed: {images / 'broken.png'}: 400 invalid_image" in errors
    summary = errors.strip().splitlines()[-1]
    assert summary.startswith("centermask: 3 images, 2 segmented, 1 failed, ")
    assert summary.endswith(f"results in {out}")


def test_without_an_output_directory_results_go_to_stdout(
    tiny_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_png(tmp_path / "one.png", 2, 64, 64)
    second = write_png(tmp_path / "two.png", 3, 70, 90)
    status = main(["segment", str(first), str(second), "--url", tiny_server.url, "--score-threshold", "0.5",
                   "--classes", "person,category_id:3", "--no-progress"])  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    results = [SegmentResponse.model_validate_json(line) for line in captured.out.splitlines()]
    assert sorted(r.file for r in results) == ["one.png", "two.png"]
    for result in results:
        assert all(i.score >= 0.5 and i.category_id in (1, 3) for i in result.instances)
    assert "2 images, 2 segmented, 0 failed" in captured.err


def test_the_progress_bar_and_the_overlay_match_the_json(
    tiny_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from centermask_client.overlay import draw_overlay

    source = write_png(tmp_path / "in" / "c.png", 4, 96, 96)
    out = tmp_path / "out"
    assert (
        main(["segment", str(source), "--url", tiny_server.url, "--out-dir", str(out), "--format", "png"])
        == 0
    )
    result = SegmentResponse.model_validate(json.loads((out / "c.json").read_text()))
    expected = draw_overlay(Image.open(source), result.instances)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "c.overlay.png")), np.asarray(expected))
    assert "1 image, 1 segmented" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.png"], "no such file or directory: missing.png"),
        (["empty"], "no images or videos found"),
        (["a/x.png", "b/x.jpg"], "several inputs would write the same output 'x'"),
    ],
)
def test_usage_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for name in ("a/x.png", "b/x.jpg"):
        write_png(tmp_path / name, 5, 16, 16)
    assert main(["segment", *arguments, "--url", "http://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


def test_png_needs_an_output_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["segment", "x.png", "--format", "png"])
    assert raised.value.code == 2
    assert "give --out-dir" in capsys.readouterr().err


def test_an_unreachable_service_fails_every_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_png(tmp_path / "d.png", 6, 32, 32)
    write_png(tmp_path / "e.png", 7, 32, 32)
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    assert main(["segment", str(source), str(source.with_name("e.png")), "--url", "http://127.0.0.1:9",
                 "--no-progress"]) == 1  # fmt: skip
    errors = capsys.readouterr().err
    # One line says the service is not there, not one per image, and no rate of images that never went.
    assert errors.count("cannot reach http://127.0.0.1:9") == 1, errors
    assert "centermask: the service at http://127.0.0.1:9 did not answer" in errors
    assert "images/s" not in errors


def test_results_already_there_are_kept_unless_overwrite(
    tiny_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_png(tmp_path / "f.png", 7, 48, 64)
    out = tmp_path / "out"
    assert (
        main(["segment", str(source), "--url", tiny_server.url, "--out-dir", str(out), "--no-progress"]) == 0
    )
    first = (out / "f.json").read_text()
    (out / "f.json").write_text("mine")
    assert (
        main(["segment", str(source), "--url", tiny_server.url, "--out-dir", str(out), "--no-progress"]) == 2
    )
    assert "f.json is already there; pass --overwrite" in capsys.readouterr().err
    assert (out / "f.json").read_text() == "mine"
    arguments = ["segment", str(source), "--url", tiny_server.url, "--out-dir", str(out), "--no-progress"]
    assert main([*arguments, "--overwrite"]) == 0
    assert json.loads((out / "f.json").read_text())["width"] == json.loads(first)["width"] == 64


def test_both_commands_say_their_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("centermask ")
    from service.server import main as serve

    serve(["--version"])
    assert capsys.readouterr().out.startswith("centermask-serve ")
