"""The rows a job writes, one per image, and the shard files that hold them: Parquet or JSON Lines.

A row is the image's JSON record (`model.wire.records.image_record`: file, height, width, instances, as the
service answers) plus where the image came from and whether it failed:

    {"path": "s3://bucket/a.jpg", "image_id": 7, "file": "a.jpg", "height": 480, "width": 640,
     "instances": [{"box": [...], "score": ..., "class_id": ..., "category_id": ..., "class_name": ...,
                    "mask_score": ..., "mask": {"size": [480, 640], "counts": "..."}}, ...],
     "error": null}

An image that could not be read or segmented has `error` (what went wrong) and null height, width and
instances. Parquet holds the same fields as typed columns (the instances a list of structs, the mask a struct
whose fields follow `--mask-format`), so pandas, Polars, DuckDB or Spark read them as they are; reading a row
back gives the same dict as the JSON.

What travels from the actors to the driver is a pyarrow table per batch (`ShardFormat.table`): for Parquet the
row columns themselves, for JSON Lines each row's finished line, so the driver only concatenates.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from centermask_client.schemas import MaskFormat

RowFormat = Literal["parquet", "jsonl"]
ROW_FORMATS: tuple[RowFormat, ...] = get_args(RowFormat)
ROW_FIELDS = ("path", "image_id", "file", "height", "width", "instances", "error")
# Beside the rows of a JSON Lines batch: what the driver needs without parsing the lines.
_LINE = "line"
_INSTANCE_COUNT = "instance_count"


def mask_type(mask_format: MaskFormat) -> pa.DataType | None:
    size = pa.field("size", pa.list_(pa.int64()))
    if mask_format == "rle":
        return pa.struct([size, pa.field("counts", pa.string())])
    if mask_format == "polygon":
        part = pa.struct(
            [pa.field("outer", pa.list_(pa.float64())), pa.field("holes", pa.list_(pa.list_(pa.float64())))]
        )
        return pa.struct([size, pa.field("polygons", pa.list_(part))])
    return None


def row_schema(mask_format: MaskFormat) -> pa.Schema:
    """The Parquet schema of a job's rows (see the module's docstring)."""
    fields = [
        pa.field("box", pa.list_(pa.float64())),
        pa.field("score", pa.float64()),
        pa.field("class_id", pa.int64()),
        pa.field("category_id", pa.int64()),
        pa.field("class_name", pa.string()),
        pa.field("mask_score", pa.float64()),
    ]
    mask = mask_type(mask_format)
    if mask is not None:
        fields.append(pa.field("mask", mask))
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("file", pa.string()),
            pa.field("height", pa.int64()),
            pa.field("width", pa.int64()),
            pa.field("instances", pa.list_(pa.struct(fields))),
            pa.field("error", pa.string()),
        ]
    )


def failed_row(path: str, image_id: int, file: str, error: str) -> dict[str, Any]:
    return {
        "path": path,
        "image_id": image_id,
        "file": file,
        "height": None,
        "width": None,
        "instances": None,
        "error": error,
    }


@dataclass(frozen=True)
class Index:
    """What the job's bookkeeping needs to know of some rows: their ids, which failed, how many instances."""

    ids: list[int]
    failed: list[int]
    instances: int


class ShardFormat(ABC):
    """How rows are carried to the driver and written into shard files."""

    suffix: str

    def __init__(self, mask_format: MaskFormat) -> None:
        self.mask_format = mask_format

    @abstractmethod
    def table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        """Rows → the table a batch hands on (in the actors)."""

    @abstractmethod
    def index(self, table: pa.Table) -> Index:
        """The bookkeeping of tables from `table`."""

    @abstractmethod
    def records(self, table: pa.Table) -> list[dict[str, Any]]:
        """The rows of a table from `table`, as dicts."""

    @abstractmethod
    def encode(self, tables: Sequence[pa.Table]) -> bytes:
        """Tables from `table` → the bytes of one shard file."""

    @abstractmethod
    def rows(self, data: bytes) -> Iterator[dict[str, Any]]:
        """A shard file's rows, as dicts (the JSON rows)."""

    @abstractmethod
    def read_index(self, data: bytes) -> Index:
        """The bookkeeping of a shard file."""

    @abstractmethod
    def without(self, data: bytes, image_ids: set[int]) -> bytes:
        """A shard file's bytes without the rows of these images."""


def _failed_ids(ids: Sequence[int], errors: Sequence[str | None]) -> list[int]:
    return [image_id for image_id, error in zip(ids, errors, strict=True) if error is not None]


class ParquetShards(ShardFormat):
    suffix = ".parquet"

    def __init__(self, mask_format: MaskFormat) -> None:
        super().__init__(mask_format)
        self.schema = row_schema(mask_format)

    def table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(list(rows), schema=self.schema)

    def index(self, table: pa.Table) -> Index:
        ids = table.column("image_id").to_pylist()
        counts = pc.list_value_length(table.column("instances"))
        return Index(
            ids,
            _failed_ids(ids, table.column("error").to_pylist()),
            int(pc.sum(counts).as_py() or 0),
        )

    def records(self, table: pa.Table) -> list[dict[str, Any]]:
        return list(table.select(list(ROW_FIELDS)).to_pylist())

    def encode(self, tables: Sequence[pa.Table]) -> bytes:
        buffer = io.BytesIO()
        table = pa.concat_tables([t.select(list(ROW_FIELDS)) for t in tables]) if tables else None
        pq.write_table(table if table is not None else self.schema.empty_table(), buffer)
        return buffer.getvalue()

    def rows(self, data: bytes) -> Iterator[dict[str, Any]]:
        for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=256):
            yield from batch.to_pylist()

    def read_index(self, data: bytes) -> Index:
        return self.index(pq.read_table(io.BytesIO(data), columns=["image_id", "instances", "error"]))

    def without(self, data: bytes, image_ids: set[int]) -> bytes:
        table = pq.read_table(io.BytesIO(data))
        keep = pc.invert(pc.is_in(table.column("image_id"), pa.array(sorted(image_ids), pa.int64())))
        return self.encode([table.filter(keep)])


class JsonLinesShards(ShardFormat):
    suffix = ".jsonl"
    _schema = pa.schema(
        [
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("error", pa.string()),
            pa.field(_INSTANCE_COUNT, pa.int64(), nullable=False),
            pa.field(_LINE, pa.large_binary(), nullable=False),
        ]
    )

    def table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "image_id": [row["image_id"] for row in rows],
                "error": [row["error"] for row in rows],
                _INSTANCE_COUNT: [len(row["instances"] or ()) for row in rows],
                _LINE: [orjson.dumps({field: row[field] for field in ROW_FIELDS}) + b"\n" for row in rows],
            },
            schema=self._schema,
        )

    def index(self, table: pa.Table) -> Index:
        ids = table.column("image_id").to_pylist()
        return Index(
            ids,
            _failed_ids(ids, table.column("error").to_pylist()),
            int(pc.sum(table.column(_INSTANCE_COUNT)).as_py() or 0),
        )

    def records(self, table: pa.Table) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in table.column(_LINE).to_pylist()]

    def encode(self, tables: Sequence[pa.Table]) -> bytes:
        return b"".join(line for table in tables for line in table.column(_LINE).to_pylist())

    def rows(self, data: bytes) -> Iterator[dict[str, Any]]:
        for line in data.splitlines():
            if line:
                yield orjson.loads(line)

    def read_index(self, data: bytes) -> Index:
        rows = list(self.rows(data))
        ids = [row["image_id"] for row in rows]
        return Index(
            ids,
            _failed_ids(ids, [row["error"] for row in rows]),
            sum(len(row["instances"] or ()) for row in rows),
        )

    def without(self, data: bytes, image_ids: set[int]) -> bytes:
        return b"".join(
            line + b"\n"
            for line in data.splitlines()
            if line and orjson.loads(line)["image_id"] not in image_ids
        )


def shard_format(row_format: RowFormat, mask_format: MaskFormat) -> ShardFormat:
    if row_format == "parquet":
        return ParquetShards(mask_format)
    return JsonLinesShards(mask_format)
