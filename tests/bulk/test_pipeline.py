"""`centermask-bulk` end to end on a local Ray (2 CPUs, one session for the module): every image once, each
row what `predict` gives, bad files recorded, failures retried, COCO results that pycocotools evaluates, and
an fsspec filesystem (the in-memory one) for inputs and output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from bulk.cli import main
from bulk.shards import shard_format
from tests.bulk.helpers import draw_image, encode, output_rows, reference_records, write_images
from tests.helpers import REPO

ray = pytest.importorskip("ray", reason="Ray is the [bulk] extra (pip install -e .[bulk])")
pytest.importorskip("ray.data", reason="Ray Data is the [bulk] extra (pip install -e .[bulk])")

# Small batches and shards, so that a dozen images make several of each.
FLAGS = ["--device", "cpu", "--read-batch", "2", "--shard-size", "4", "--read-threads", "2"]
MEMORY_IMAGES = 6
# The process title Ray gives the actors of the Segmenter stage.
ACTOR = "ray::MapWorker(MapBatches(Segmenter))"


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
        # The hook is this module's function, pickled by name: the workers find `tests` through the checkout
        # (pytest puts it on the driver's path, not on theirs).
        runtime_env={
            "worker_process_setup_hook": fill_memory,
            "env_vars": {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            },
        },
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

    # Actors that cannot load the model stop the run, saying why; a job that wrote nothing yields to the next.
    assert main([*command, "--overlays", "--precision", "fp16"]) == 2
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


def coco_annotations() -> dict[str, Any]:
    """A COCO dataset of the in-memory images: ids of its own, one box-and-polygon annotation each."""
    images, annotations = [], []
    for seed in range(MEMORY_IMAGES):
        width, height = draw_image(100 + seed).size
        images.append({"id": 500 + seed, "file_name": f"photos/{seed}.png", "width": width, "height": height})
        w, h = width / 2, height / 2
        annotations.append(
            {
                "id": seed + 1,
                "image_id": 500 + seed,
                "category_id": 1,
                "bbox": [4.0, 4.0, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [[4.0, 4.0, 4.0 + w, 4.0, 4.0 + w, 4.0 + h, 4.0, 4.0 + h]],
            }
        )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def test_coco_annotations_at_a_url_in_results_that_pycocotools_evaluates_out(
    small_weights: Path, small_predictor: Any
) -> None:
    """fsspec both ways (the in-memory filesystem): a COCO annotation file's images in, each with its own id;
    the shards, and COCO results that pycocotools loads and evaluates against it, out."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    memory = fsspec.filesystem("memory")
    dataset = coco_annotations()
    memory.pipe_file("/bucket/val.json", json.dumps(dataset).encode())
    command = ["memory://bucket/val.json", "--output", "memory://bucket/out", "--weights", str(small_weights)]
    assert main([*command, *FLAGS, "--format", "jsonl"]) == 0

    shards = shard_format("jsonl", "rle")
    listing = sorted(memory.ls("/bucket/out/shards", detail=False))
    rows = [row for path in listing for row in shards.rows(memory.cat_file(path))]
    ids = {image["id"]: f"memory:///bucket/{image['file_name']}" for image in dataset["images"]}
    assert sorted((row["image_id"], row["path"]) for row in rows) == sorted(ids.items())
    expected = reference_records(small_predictor, ids.values(), read=lambda url: memory.cat_file(url[9:]))
    for row in rows:
        assert row["instances"] == expected[row["path"]]

    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    for kind, name in (("bbox", "coco_bbox_results.json"), ("segm", "coco_segm_results.json")):
        results = json.loads(memory.cat_file(f"/bucket/out/{name}"))
        assert len(results) == sum(len(row["instances"]) for row in rows)
        assert {r["category_id"] for r in results} <= set(range(1, 91))  # COCO's ids, from the checkpoint
        evaluation = COCOeval(gt, gt.loadRes(results), kind)
        evaluation.evaluate()
        evaluation.accumulate()
    # Without an annotation file, coco_images.json is the dataset the results load against.
    images = COCO()
    images.dataset = json.loads(memory.cat_file("/bucket/out/coco_images.json"))
    images.createIndex()
    assert sorted(images.getImgIds()) == sorted(ids)
    assert len(images.loadRes(json.loads(memory.cat_file("/bucket/out/coco_bbox_results.json"))).anns) > 0
    assert json.loads(memory.cat_file("/bucket/out/manifest.json"))["complete"]


def processes_under(ancestor: int) -> dict[int, str]:
    """pid → command line of every live process descending from `ancestor`."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after it are what we want.
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found = {}
    for pid in parents:
        parent = parents.get(pid)
        while parent is not None and parent not in (ancestor, 0, 1):
            parent = parents.get(parent)
        if parent == ancestor:
            found[pid] = commands[pid]
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_anywhere_then_resumed_every_image_once(tmp_path: Path, small_weights: Path) -> None:
    """A worker (the actor) is killed mid-run and the run goes on; then the driver is killed; the same
    command resumes, segments only what is missing, and the output holds every image exactly once. The
    driver joins this module's Ray with --address, as on a cluster, rather than starting its own."""
    images = sorted(str(p) for p in write_images(tmp_path / "photos", 30))
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "bulk", str(tmp_path / "photos"), "--output", str(out)]
    command += ["--weights", str(small_weights), *FLAGS, "--shard-size", "2", "--address", address]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "clients/python"), str(REPO)])}

    def shards() -> int:
        return len(list((out / "index").glob("*.json"))) if (out / "index").is_dir() else 0

    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: shards() >= 1, "the first shard")
            actors = [pid for pid, line in processes_under(os.getpid()).items() if line.startswith(ACTOR)]
            assert actors, "no Segmenter actor found"
            for pid in actors:
                os.kill(pid, signal.SIGKILL)
            reached = shards()
            wait_for(lambda: shards() >= reached + 2, "shards after the actor was killed")
            driver.kill()
        finally:
            driver.kill()
            driver.wait(timeout=60)
    assert not (out / "manifest.json").exists(), "the first run finished before it was killed"
    done_before = len(output_rows(out))
    assert 0 < done_before < len(images)

    resumed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = output_rows(out)
    assert sorted(row["path"] for row in rows) == images
    assert len({row["image_id"] for row in rows}) == len(rows) == len(images)
    assert all(row["error"] is None for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["last_run"]["images"] == len(images) - done_before
