"""The bookkeeping that makes a job exactly-once: shard formats, whole-file writes, the manifest's rules
(`bulk.manifest`'s docstring) exercised on the states a kill can leave, without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest

from bulk.inputs import Image
from bulk.manifest import JobMismatch, State, check_job, pending, read_images, start_job
from bulk.shards import ROW_FORMATS, failed_row, shard_format
from bulk.storage import Output, OutputLocked


def instance(mask_format: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "box": [1.5, 2.25, 30.0, 40.125],
        "score": 0.75,
        "class_id": 2,
        "category_id": 3,
        "class_name": "car",
        "mask_score": 0.5,
    }
    if mask_format == "rle":
        found["mask"] = {"size": [48, 64], "counts": "PP`0"}
    elif mask_format == "polygon":
        found["mask"] = {
            "size": [48, 64],
            "polygons": [{"outer": [0.0, 0.0, 4.0, 0.0, 4.0, 4.0], "holes": []}],
        }
    return found


def row(image_id: int, mask_format: str = "rle", instances: int = 2) -> dict[str, Any]:
    return {
        "path": f"/data/{image_id}.png",
        "image_id": image_id,
        "file": f"{image_id}.png",
        "height": 48,
        "width": 64,
        "instances": [instance(mask_format)] * instances,
        "error": None,
    }


@pytest.mark.parametrize("mask_format", ["rle", "polygon", "none"])
@pytest.mark.parametrize("row_format", ROW_FORMATS)
def test_rows_read_back_as_written(row_format: str, mask_format: str) -> None:
    shards = shard_format(row_format, mask_format)  # type: ignore[arg-type]
    rows = [
        row(1, mask_format),
        failed_row("/data/2.png", 2, "2.png", "cannot decode"),
        row(3, mask_format, 0),
    ]
    table = shards.table(rows)
    data = shards.encode([table, shards.table([row(4, mask_format)])])
    assert list(shards.rows(data)) == [*rows, row(4, mask_format)]
    index = shards.read_index(data)
    assert (index.ids, index.failed, index.instances) == ([1, 2, 3, 4], [2], 4)
    assert [r["image_id"] for r in shards.rows(shards.without(data, {2, 4}))] == [1, 3]


def test_whole_file_writes_leave_no_partial_file(tmp_path: Path) -> None:
    output = Output.open(str(tmp_path / "out"))
    output.write("a/b.bin", b"first")
    output.write("a/b.bin", b"second")
    assert (tmp_path / "out/a/b.bin").read_bytes() == b"second"
    with pytest.raises(RuntimeError), output.write_stream("c.json") as stream:
        stream.write(b"[1, 2")
        raise RuntimeError("killed half-way")
    assert not (tmp_path / "out/c.json").exists()
    # What a SIGKILL between write and rename leaves: a temporary, removed when the output is next opened.
    (tmp_path / "out/shards").mkdir()
    (tmp_path / "out/shards/.part-000001.parquet.tmp-123").write_bytes(b"half")
    State.load(output, shard_format("parquet", "rle"))
    assert os.listdir(tmp_path / "out/shards") == []


def test_one_writer_per_output(tmp_path: Path) -> None:
    output = Output.open(str(tmp_path))
    with output.lock():
        with pytest.raises(OutputLocked), output.lock():
            pass
        # The lock is the kernel's: another process cannot take it either.
        holder = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert holder.stdout.strip() == "locked", holder.stderr
    with output.lock():
        pass


LOCK_PROBE = """
import sys
from bulk.storage import Output, OutputLocked
try:
    with Output.open(sys.argv[1]).lock():
        print("free")
except OutputLocked:
    print("locked")
"""


def new_state(location: str, row_format: str = "parquet") -> State:
    return State.load(Output.open(location), shard_format(row_format, "rle"))  # type: ignore[arg-type]


@pytest.mark.parametrize("row_format", ROW_FORMATS)
def test_a_kill_between_shard_and_entry_loses_and_repeats_nothing(tmp_path: Path, row_format: str) -> None:
    state = new_state(str(tmp_path), row_format)
    shards = state.shards
    first = shards.table([row(1), row(2)])
    state.commit([first], shards.index(first))
    second = shards.table([row(3), failed_row("/data/4.png", 4, "4.png", "truncated")])
    state.commit([second], shards.index(second))
    suffix = shards.suffix
    # The shard was renamed into place, its entry never written ...
    (tmp_path / "index/part-000002.json").unlink()
    # ... and a shard rewritten in place (--retry-failed) whose new entry never came.
    entry = json.loads((tmp_path / "index/part-000001.json").read_text())
    (tmp_path / "index/part-000001.json").write_text(json.dumps({**entry, "bytes": entry["bytes"] + 1}))
    # An entry whose shard is gone counts for nothing.
    (tmp_path / "index/part-000009.json").write_text(json.dumps({**entry, "shard": f"part-000009{suffix}"}))

    resumed = new_state(str(tmp_path), row_format)
    assert sorted(resumed.done_ids().tolist()) == [1, 2, 3, 4]
    assert resumed.failed_ids() == [4]
    assert resumed.instances() == 6
    assert (tmp_path / "index/part-000002.json").exists()
    # New shards never take an old shard's name.
    third = shards.table([row(5)])
    assert resumed.commit([third], shards.index(third)).shard == f"part-000010{suffix}"


def test_retry_failed_takes_the_failed_rows_out(tmp_path: Path) -> None:
    state = new_state(str(tmp_path))
    shards = state.shards
    table = shards.table([row(1), failed_row("/data/2.png", 2, "2.png", "truncated"), row(3)])
    state.commit([table], shards.index(table))
    assert state.forget_failed() == 1
    assert sorted(state.done_ids().tolist()) == [1, 3]
    # As the next run sees it, from the files alone.
    assert sorted(new_state(str(tmp_path)).done_ids().tolist()) == [1, 3]


def test_a_duplicate_row_from_outside_is_dropped_from_the_later_shard(tmp_path: Path) -> None:
    state = new_state(str(tmp_path))
    shards = state.shards
    for rows in ([row(1), row(2)], [row(2), row(3)]):
        table = shards.table(rows)
        state.commit([table], shards.index(table))
    resumed = new_state(str(tmp_path))
    assert sorted(resumed.done_ids().tolist()) == [1, 2, 3]
    assert [r["image_id"] for r in shards.rows((tmp_path / "shards/part-000002.parquet").read_bytes())] == [3]


def test_pending_is_what_no_shard_holds_in_job_order(tmp_path: Path) -> None:
    output = Output.open(str(tmp_path))
    images = [Image(i, f"/data/{i}.png") for i in (5, 1, 9, 2)]
    start_job(output, {"inputs": ["/data"]}, images)
    state = new_state(str(tmp_path))
    table = state.shards.table([row(9)])
    state.commit([table], state.shards.index(table))
    assert pending(read_images(output), state.done_ids()).column("image_id").to_pylist() == [5, 1, 2]


def test_another_job_in_the_output_is_refused_saying_what_differs() -> None:
    check_job({"mask_format": "rle", "format_version": 1}, {"mask_format": "rle"}, "out")
    with pytest.raises(JobMismatch, match="mask_format: 'rle' there, 'polygon' now"):
        check_job({"mask_format": "rle"}, {"mask_format": "polygon"}, "out")


def test_an_object_store_output(tmp_path: Path) -> None:
    """fsspec outputs (here the in-memory one) are written in whole objects, and read back the same."""
    memory = fsspec.filesystem("memory")
    try:
        state = new_state("memory://bucket/job")
        table = state.shards.table([row(1)])
        state.commit([table], state.shards.index(table))
        assert memory.exists("/bucket/job/shards/part-000001.parquet")
        with state.output.write_stream("results.json") as stream:
            stream.write(b"[]")
        assert memory.cat_file("/bucket/job/results.json") == b"[]"
        assert new_state("memory://bucket/job").done_ids().tolist() == [1]
    finally:
        memory.store.clear()
