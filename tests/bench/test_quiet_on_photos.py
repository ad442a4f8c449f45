"""`python -m bench.quiet_on_photos --also`: a user's own photographs, counted as the bundled ones are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import quiet_on_photos


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folders_give_their_images_and_files_are_taken_as_named(folder: Path) -> None:
    found = quiet_on_photos.own_photos([folder, folder / "a.png"])
    assert list(found) == [str(folder / "a.png"), str(folder / "b.jpg")]


def test_own_photos_are_counted_and_averaged_apart_from_the_bundled_ones(
    folder: Path, small_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = quiet_on_photos.measure(str(small_weights), {}, quiet_on_photos.own_photos([folder]))
    own = result["also"]
    assert set(own["photos"]) == {str(folder / "a.png"), str(folder / "b.jpg")}
    assert own["photos"][str(folder / "a.png")]["size"] == [70, 90]
    counts = [p["at_0.3"] for p in own["photos"].values()]
    assert own["mean_at_0.3"] == sum(counts) / 2
    assert result["mean_at_0.3"] == 0.0  # no bundled photograph was asked for
    quiet_on_photos.print_result(result)
    printed = capsys.readouterr().out
    assert "-- your photographs (--also)" in printed and "mean over your 2 photographs" in printed
