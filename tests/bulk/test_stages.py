"""The pipeline's stages on single batches, without Ray: reading records every failure with its reason, the
segmenter's rows are `predict`'s records, overlays are drawn."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from bulk.stages import Segmenter, SegmentSettings, draw_overlays, read_images
from tests.bulk.helpers import draw_image, encode, reference_records, write_images


def batch(paths: list[str]) -> pa.Table:
    return pa.table({"image_id": list(range(1, len(paths) + 1)), "path": paths})


def test_reading_records_each_failure_and_goes_on(tmp_path: Path) -> None:
    good = write_images(tmp_path, 2)
    (tmp_path / "corrupt.png").write_bytes(encode(draw_image(1), "PNG")[:60])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "anim.gif").write_bytes(encode(draw_image(2), "GIF"))
    (tmp_path / "huge.png").write_bytes(encode(Image.new("RGB", (300, 300)), "PNG"))
    paths = [
        str(good[0]),
        str(tmp_path / "corrupt.png"),
        str(tmp_path / "missing.png"),
        str(tmp_path / "empty.jpg"),
        str(tmp_path / "anim.gif"),
        str(tmp_path / "huge.png"),
        "memory://nowhere/x.png",
        str(good[1]),
    ]
    decoded = read_images(batch(paths), draft_to=None, max_pixels=200 * 200, threads=3)
    errors = decoded.column("error").to_pylist()
    assert errors[0] is None and errors[-1] is None
    assert errors[1:-1] == [
        "cannot decode the image: it is truncated or corrupt",
        "cannot read the file: No such file or directory",
        "cannot identify the image; send JPEG, PNG, WEBP, BMP, TIFF",
        "GIF images are not supported; send JPEG, PNG, WEBP, BMP, TIFF",
        "the image has 300×300 pixels, more than the limit of 40000",
        "cannot read the file: no such file",
    ]
    assert decoded.column("image_id").to_pylist() == list(range(1, 9))
    width, height = Image.open(good[0]).size
    assert decoded.column("height")[0].as_py() == height and decoded.column("width")[0].as_py() == width


@pytest.fixture(scope="module")
def segmenter(small_weights: Path) -> Segmenter:
    options = {"weights": str(small_weights), "device": "cpu"}
    return Segmenter(options, SegmentSettings(batch_size=1, threads=1, keep_pixels=True))


def test_rows_are_what_predict_gives_each_image(
    tmp_path: Path, segmenter: Segmenter, small_predictor: Any
) -> None:
    paths = [str(p) for p in write_images(tmp_path, 5)] + [str(tmp_path / "missing.png")]
    rows = segmenter.shards.records(
        segmenter(read_images(batch(paths), draft_to=None, max_pixels=10**8, threads=1))
    )
    expected = reference_records(small_predictor, paths[:-1])
    assert [row["path"] for row in rows] == paths
    for row in rows[:-1]:
        assert row["instances"] == expected[row["path"]]
        assert row["error"] is None and row["file"] == Path(row["path"]).name
    assert rows[-1]["error"] == "cannot read the file: No such file or directory"
    assert rows[-1]["instances"] is None


def test_batches_of_one_padded_shape_agree_with_predict(
    tmp_path: Path, small_weights: Path, small_predictor: Any
) -> None:
    """Images of one size share forward passes; the detections stay `predict`'s up to float rounding."""
    paths = []
    for seed in range(4):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(encode(draw_image(seed, (96, 72)), "PNG"))
        paths.append(str(path))
    batched = Segmenter(
        {"weights": str(small_weights), "device": "cpu"}, SegmentSettings(batch_size=4, threads=1)
    )
    rows = batched.shards.records(
        batched(read_images(batch(paths), draft_to=None, max_pixels=10**8, threads=1))
    )
    expected = reference_records(small_predictor, paths)
    for row in rows:
        found, wanted = row["instances"], expected[row["path"]]
        assert len(found) == len(wanted)
        for a, b in zip(found, wanted, strict=True):
            assert a["class_id"] == b["class_id"]
            assert a["box"] == pytest.approx(b["box"], abs=1e-2)
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_overlays_are_drawn_on_the_image(tmp_path: Path, segmenter: Segmenter) -> None:
    paths = [str(p) for p in write_images(tmp_path, 2)] + [str(tmp_path / "missing.png")]
    rows = segmenter(read_images(batch(paths), draft_to=None, max_pixels=10**8, threads=1))
    drawn = draw_overlays(rows, row_format="parquet", mask_format="rle")
    overlays = drawn.column("overlay").to_pylist()
    assert overlays[2] is None
    for path, overlay in zip(paths[:2], overlays[:2], strict=True):
        picture = Image.open(io.BytesIO(overlay))
        assert picture.format == "PNG" and picture.size == Image.open(path).size
    assert drawn.column("overlay_name").to_pylist()[:2] == [
        f"1-{Path(paths[0]).stem}.png",
        f"2-{Path(paths[1]).stem}.png",
    ]
    assert "_pixels" not in drawn.column_names
