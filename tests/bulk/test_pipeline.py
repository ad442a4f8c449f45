"""`centermask-bulk` end to end on a local Ray (2 CPUs, one session for the module): every image once, each
row what `predict` gives, bad files recorded, failures retried, COCO results that pycocotools evaluates, and
an fsspec filesystem (the in-memory one) for inputs and output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from bulk.cli import main
from bulk.shards import shard_format
from tests.bulk.helpers import draw_image, encode, output_rows, reference_records, write_images

ray = pytest.importorskip("ray", reason="Ray is the [bulk] extra (pip install -e .[bulk])")
pytest.importorskip("ray.data", reason="Ray Data is the [bulk] extra (pip install -e .[bulk])")

# Small batches and shards, so that a dozen images make several of each.
FLAGS = ["--device", "cpu", "--read-batch", "2", "--shard-size", "4", "--read-threads", "2"]
MEMORY_IMAGES = 6


def fill_memory() -> None:
    """The in-memory filesystem's images. fsspec's memory filesystem is one store per process, so every Ray
    worker runs this at start (`worker_process_setup_hook`) and they all see the same bucket."""
    memory = fsspec.filesystem("memory")
    for seed in range(MEMORY_IMAGES):
        memory.pipe_file(f"/bucket/photos/{seed}.png", encode(draw_image(100 + seed), "PNG"))


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": fill_memory},
        configure_logging=False,
    )
    fill_memory()
    yield
    ray.shutdown()
    fsspec.filesystem("memory").store.clear()


def test_a_folder_every_image_once_as_predict_gives_it(
    tmp_path: Path, small_weights: Path, small_predictor: Any
) -> None:
    images = [str(p) for p in write_images(tmp_path / "photos", 10)]
    corrupt = tmp_path / "photos/corrupt.png"
    corrupt.write_bytes(encode(draw_image(7), "PNG")[:100])
    out = tmp_path / "out"
    command = [str(tmp_path / "photos"), "--output", str(out), "--weights", str(small_weights), *FLAGS]

    assert main([*command, "--overlays"]) == 1  # one image failed
    rows = output_rows(out)
    assert sorted(row["path"] for row in rows) == sorted([*images, str(corrupt)])
    assert len({row["image_id"] for row in rows}) == len(rows) == 11
    expected = reference_records(small_predictor, images)
    for row in rows:
        if row["path"] == str(corrupt):
            assert row["error"] == "cannot decode the image: it is truncated or corrupt"
            assert row["instances"] is None
        else:
            assert row["error"] is None
            assert row["instances"] == expected[row["path"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["failed"] == 1 and manifest["done"] == 11
    assert manifest["instances"] == sum(len(v) for v in expected.values())
    assert len(manifest["shards"]) >= 3
    assert len(list((out / "overlays").iterdir())) == 10

    # The file repaired, --retry-failed segments it again, and only it.
    corrupt.write_bytes(encode(draw_image(7), "PNG"))
    assert main([*command, "--overlays", "--retry-failed", "--dry-run"]) == 0
    assert main([*command, "--overlays", "--retry-failed"]) == 0
    rows = output_rows(out)
    assert len(rows) == len({row["image_id"] for row in rows}) == 11
    (repaired,) = [row for row in rows if row["path"] == str(corrupt)]
    assert repaired["instances"] == reference_records(small_predictor, [str(corrupt)])[str(corrupt)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failed"] == 0 and manifest["last_run"]["images"] == 1

    # Another job in the same output is refused, and nothing changes.
    assert main([*command, "--overlays", "--mask-format", "polygon"]) == 2


def test_coco_annotations_in_and_results_pycocotools_evaluates(tmp_path: Path, small_weights: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    paths = write_images(tmp_path / "val", 6)
    images, annotations = [], []
    for index, path in enumerate(paths):
        width, height = draw_image(index).size
        image_id = 500 + index
        images.append(
            {
                "id": image_id,
                "file_name": str(path.relative_to(tmp_path / "val")),
                "width": width,
                "height": height,
            }
        )
        box = [4.0, 4.0, width / 2, height / 2]
        polygon = [4.0, 4.0, 4.0 + box[2], 4.0, 4.0 + box[2], 4.0 + box[3], 4.0, 4.0 + box[3]]
        annotations.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                "segmentation": [polygon],
            }
        )
    categories = [{"id": 1, "name": "person"}]
    (tmp_path / "val/annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    out = tmp_path / "out"
    command = [str(tmp_path / "val/annotations.json"), "--output", str(out), "--weights", str(small_weights)]
    assert main([*command, *FLAGS, "--format", "jsonl", "--score-threshold", "0.3"]) == 0

    rows = output_rows(out)
    assert sorted(row["image_id"] for row in rows) == [image["id"] for image in images]
    gt = COCO(str(tmp_path / "val/annotations.json"))
    for kind, name in (("bbox", "coco_bbox_results.json"), ("segm", "coco_segm_results.json")):
        results = json.loads((out / name).read_text())
        assert len(results) == sum(len(row["instances"]) for row in rows)
        assert {r["category_id"] for r in results} <= set(range(1, 91))  # COCO's ids, from the checkpoint
        evaluation = COCOeval(gt, gt.loadRes(str(out / name)), kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # Without an annotation file, coco_images.json is the dataset the results load against.
    listing = COCO(str(out / "coco_images.json"))
    assert sorted(listing.getImgIds()) == [image["id"] for image in images]
    assert len(listing.loadRes(str(out / "coco_bbox_results.json")).getAnnIds()) > 0


def test_fsspec_urls_in_and_out(small_weights: Path, small_predictor: Any) -> None:
    memory = fsspec.filesystem("memory")
    command = ["memory://bucket/photos", "--output", "memory://bucket/out", "--weights", str(small_weights)]
    assert main([*command, *FLAGS, "--format", "jsonl"]) == 0
    shards = shard_format("jsonl", "rle")
    rows = [
        row
        for path in sorted(memory.ls("/bucket/out/shards", detail=False))
        for row in shards.rows(memory.cat_file(path))
    ]
    paths = [f"memory:///bucket/photos/{seed}.png" for seed in range(MEMORY_IMAGES)]
    assert sorted(row["path"] for row in rows) == paths
    expected = reference_records(
        small_predictor, paths, read=lambda url: memory.cat_file(url.removeprefix("memory://"))
    )
    for row in rows:
        assert row["instances"] == expected[row["path"]]
    assert json.loads(memory.cat_file("/bucket/out/manifest.json"))["complete"]
