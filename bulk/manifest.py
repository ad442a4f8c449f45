"""A job's state on disk, and why every image ends up in its output exactly once.

An output holds:

    job.json                  the job: its inputs and everything that decides its results (written once)
    inputs.parquet            its images, (image_id, path), as found when it started (written once)
    shards/part-000001.parquet (or .jsonl)   rows, one per image (`bulk.shards`)
    index/part-000001.json    the manifest's entry of a shard: its size, image ids, failed ids, instances
    overlays/                 optional drawings (`--overlays`)
    manifest.json, coco_*.json   written when a run ends (`bulk.coco`)

The rules that make a run killable at any instant (SIGKILL of the driver or of a worker) and resumable by
running the same command again:

* Every file is written whole or not at all (`bulk.storage`).
* `inputs.parquet` is written before `job.json`, and nothing else before either: a job exists once its
  `job.json` does, and from then on its images and their ids are fixed; a run killed before that starts over.
* The driver is the only writer of rows. It writes a shard, then the shard's index entry. A shard is the
  truth; an entry only saves reading it: a shard without an entry, or whose size differs from its entry's (a
  kill in between), is read and indexed again; an entry without its shard is ignored.
* The images still to do are the job's images whose ids no shard holds. The driver keeps the ids it has
  written and never writes one twice, so a row that Ray computes twice (a retried task) is written once.
* `--retry-failed` first rewrites each shard holding failed rows without them (in place: atomically), then
  its entry; those images are then missing, and processed like any other.

So at every instant each image is in at most one shard, and a run that finishes leaves it in exactly one.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bulk.inputs import Image
from bulk.shards import Index, ShardFormat
from bulk.storage import Output

FORMAT_VERSION = 1
JOB = "job.json"
INPUTS = "inputs.parquet"
SHARDS = "shards"
INDEX = "index"
OVERLAYS = "overlays"
_SHARD_NAME = re.compile(r"part-(\d+)(\.[a-z]+)$")


class JobMismatch(ValueError):
    """The output holds another job (other inputs, weights or result options)."""


@dataclass(frozen=True)
class Entry:
    """The manifest's entry of one shard."""

    shard: str
    bytes: int
    ids: list[int]
    failed: list[int]
    instances: int


def shard_number(name: str) -> int | None:
    match = _SHARD_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def read_job(output: Output) -> dict[str, Any] | None:
    """The job an output holds, or None when it holds none yet."""
    if not output.exists(JOB):
        return None
    return dict(json.loads(output.read(JOB)))


def job_differs(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between the job an output holds and the one asked for, one phrase each."""
    return [
        f"{key}: {existing.get(key)!r} there, {wanted.get(key)!r} now"
        for key in sorted(wanted)
        if existing.get(key) != wanted.get(key)
    ]


def check_job(existing: dict[str, Any], wanted: dict[str, Any], location: str) -> None:
    """Refuse to resume an output with a different job, naming what differs."""
    differences = job_differs(existing, wanted)
    if differences:
        raise JobMismatch(
            f"{location} holds the results of another job ({'; '.join(differences)}). Run the same command "
            "to resume it, or give another --output"
        )


def start_job(output: Output, job: dict[str, Any], images: Sequence[Image]) -> None:
    """Fix a new job's images and definition (images first: see the module's docstring). Index entries of a
    job replaced before it wrote a shard go, so that none can be taken for a new shard's."""
    for name in output.sizes(INDEX):
        output.remove(posixpath.join(INDEX, name))
    table = pa.table(
        {
            "image_id": pa.array([image.image_id for image in images], pa.int64()),
            "path": pa.array([image.location for image in images], pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    output.write(INPUTS, buffer.getvalue())
    output.write(JOB, json.dumps({**job, "format_version": FORMAT_VERSION}, indent=1).encode())


def read_images(output: Output) -> pa.Table:
    """The job's images: a table of image_id and path."""
    return pq.read_table(io.BytesIO(output.read(INPUTS)))


class State:
    """The shards an output holds and what they cover; the one writer of shards."""

    def __init__(
        self, output: Output, shards: ShardFormat, entries: dict[str, Entry], read_only: bool = False
    ) -> None:
        self.output = output
        self.read_only = read_only
        self.shards = shards
        self.entries = entries
        numbers = [shard_number(name) for name in entries]
        self._next = max((n for n in numbers if n is not None), default=0) + 1

    @classmethod
    def load(cls, output: Output, shards: ShardFormat, read_only: bool = False) -> State:
        """The output's shards, their entries brought up to date (see the module's docstring); `read_only`
        works out the same without writing (--dry-run)."""
        if not read_only:
            for folder in (SHARDS, INDEX, OVERLAYS, ""):
                output.remove_temporaries(folder)
        sizes = output.sizes(SHARDS)
        stored = output.sizes(INDEX)
        state = cls(output, shards, {}, read_only)
        numbers = [n for n in map(shard_number, [*sizes, *stored]) if n is not None]
        state._next = max(numbers, default=0) + 1
        seen: set[int] = set()
        for name in sorted(sizes, key=lambda n: (shard_number(n) or 0, n)):
            if shard_number(name) is None or not name.endswith(shards.suffix):
                continue
            entry = state._stored_entry(name, sizes[name], stored)
            if entry is None:
                entry = state._index(name, output.read(posixpath.join(SHARDS, name)))
            duplicates = seen.intersection(entry.ids)
            if duplicates and read_only:
                entry = replace(entry, ids=[i for i in entry.ids if i not in duplicates])
            elif duplicates:
                # Never by this program's own writes (see the module's docstring); a shard copied in by hand
                # could. The earlier shard keeps the rows.
                entry = state._rewrite(entry, duplicates)
            seen.update(entry.ids)
            state.entries[name] = entry
        return state

    def _stored_entry(self, name: str, size: int, stored: dict[str, int]) -> Entry | None:
        entry_name = _entry_name(name)
        if entry_name not in stored:
            return None
        try:
            entry = Entry(**json.loads(self.output.read(posixpath.join(INDEX, entry_name))))
        except (ValueError, TypeError):
            return None
        return entry if entry.shard == name and entry.bytes == size else None

    def _index(self, name: str, data: bytes) -> Entry:
        index = self.shards.read_index(data)
        entry = Entry(name, len(data), index.ids, index.failed, index.instances)
        self._write_entry(entry)
        return entry

    def _write_entry(self, entry: Entry) -> None:
        if self.read_only:
            return
        self.output.write(posixpath.join(INDEX, _entry_name(entry.shard)), json.dumps(asdict(entry)).encode())

    def _rewrite(self, entry: Entry, image_ids: set[int]) -> Entry:
        """The shard without these images' rows, written over itself, then its entry."""
        path = posixpath.join(SHARDS, entry.shard)
        data = self.shards.without(self.output.read(path), image_ids)
        self.output.write(path, data)
        return self._index(entry.shard, data)

    def done_ids(self) -> np.ndarray:
        """Ids of every image a shard holds, failed ones included."""
        return np.fromiter((i for e in self.entries.values() for i in e.ids), dtype=np.int64)

    def failed_ids(self) -> list[int]:
        return [i for e in self.entries.values() for i in e.failed]

    def instances(self) -> int:
        return sum(e.instances for e in self.entries.values())

    def forget_failed(self) -> int:
        """Take the failed rows out of the shards (`--retry-failed`): those images become missing."""
        forgotten = 0
        for name, entry in list(self.entries.items()):
            if entry.failed:
                forgotten += len(entry.failed)
                self.entries[name] = self._rewrite(entry, set(entry.failed))
        return forgotten

    def commit(self, tables: Sequence[pa.Table], index: Index) -> Entry:
        """Write rows as the next shard, then its entry."""
        name = f"part-{self._next:06d}{self.shards.suffix}"
        self._next += 1
        data = self.shards.encode(tables)
        self.output.write(posixpath.join(SHARDS, name), data)
        entry = Entry(name, len(data), index.ids, index.failed, index.instances)
        self._write_entry(entry)
        self.entries[name] = entry
        return entry

    def shard_files(self) -> list[str]:
        """Paths (inside the output) of the shards, in order."""
        return [
            posixpath.join(SHARDS, name) for name in sorted(self.entries, key=lambda n: shard_number(n) or 0)
        ]


def pending(images: pa.Table, done: np.ndarray) -> pa.Table:
    """The job's images that no shard holds, in the job's order."""
    ids = images.column("image_id").to_numpy()
    return images.filter(pa.array(~np.isin(ids, done)))


def _entry_name(shard: str) -> str:
    return posixpath.splitext(shard)[0] + ".json"


def merge_indexes(indexes: Iterable[Index]) -> Index:
    ids: list[int] = []
    failed: list[int] = []
    instances = 0
    for index in indexes:
        ids.extend(index.ids)
        failed.extend(index.failed)
        instances += index.instances
    return Index(ids, failed, instances)
