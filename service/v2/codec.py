"""The Open Inference Protocol's encoding: an infer request's body (JSON, or JSON followed by binary tensors)
→ images, parameters and wanted outputs; the instances → output tensors → the answer's body.

The input `image` is a BYTES tensor of encoded images (JPEG, PNG, ...), one element per image: base64 strings
in the JSON encoding; with the binary tensor extension (what tritonclient sends), each element as a 4-byte
little-endian length and its bytes. Parameters are validated by the same model as `/segment`'s query.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from centermask_client.schemas import SegmentParameters
from model.wire.records import instance_columns
from service.errors import InvalidRequest, describe_problems
from service.v2.models import INPUT, OUTPUTS

HEADER_LENGTH = "inference-header-content-length"
_NUMPY_TYPES = {"FP32": "<f4", "INT64": "<i8"}


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    images: list[bytes]
    parameters: dict[str, Any]
    # Output name → binary, when the request names outputs; else every output, binary if binary_output.
    outputs: dict[str, bool] | None
    binary_output: bool


def parse_request(body: bytes, header_length: str | None) -> ParsedRequest:
    """An infer request's body (JSON, or JSON then binary tensors) → its images, parameters and outputs."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the body "
                f"of {len(body)} bytes"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        message = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the request is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise InvalidRequest("the request must be a JSON object with 'inputs'")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"the request takes one input, {INPUT!r}: a BYTES tensor of encoded images")
    images, used = _images(inputs[0], binary)
    if used != len(binary):
        raise InvalidRequest(f"{len(binary) - used} bytes of binary data follow the tensors")
    parameters = _object(message.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest("the parameter binary_data_output must be true or false")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("the request's id must be a string")
    return ParsedRequest(
        request_id,
        images,
        parameters,
        requested_outputs(message.get("outputs"), binary_output),
        binary_output,
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _images(tensor: dict[str, Any], binary: bytes) -> tuple[list[bytes], int]:
    """The encoded images of the input tensor, and how many bytes of `binary` they took."""
    count = image_count(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"))
    size = _object(tensor.get("parameters"), "the input's parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidRequest(
                f"binary_data_size {str(size)[:20]} exceeds the {len(binary)} binary bytes sent"
            )
        return bytes_elements(binary[:size], count), size
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != count or not all(isinstance(item, str) for item in data):
        raise InvalidRequest(
            f"the data of {INPUT!r} must be {count} base64 strings, one per image (its shape)"
        )
    try:
        return [base64.b64decode(item, validate=True) for item in data], 0
    except binascii.Error as error:
        raise InvalidRequest(f"an image is not valid base64: {error}") from None


def image_count(name: Any, datatype: Any, shape: Any) -> int:
    """The number of images an input tensor of this name, datatype and shape holds; InvalidRequest unless
    it is the one input, `image`, a BYTES tensor of shape [n] or [n, 1] (both protocols)."""
    if name != INPUT or datatype != "BYTES":
        raise InvalidRequest(
            f"the input must be {INPUT!r} of datatype BYTES (encoded images), not "
            f"{str(name)[:50]!r} of {str(datatype)[:20]}"
        )
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in shape)
        or shape[0] < 1
        or shape[1:] not in ([], [1])
    ):
        raise InvalidRequest(
            f"the shape of {INPUT!r} must be [n] or [n, 1] for n images, not {str(shape)[:50]}"
        )
    return shape[0]


def bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """A BYTES tensor's binary form (`tensor_bytes` writes it; both protocols): each element as a 4-byte
    little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest("the binary BYTES tensor ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise InvalidRequest("the binary BYTES tensor ends inside an element")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise InvalidRequest(f"the binary tensor holds {len(elements)} elements, its shape says {count}")
    return elements


def requested_outputs(requested: Any, binary_default: bool) -> dict[str, bool] | None:
    """The outputs asked for (a list of `{"name": ..., "parameters": {"binary_data": ...}}`) → name → binary;
    None when none is named (every output)."""
    if requested is None:
        return None
    if not isinstance(requested, list) or not requested:
        raise InvalidRequest("outputs must be a non-empty list of {'name': ...} objects")
    outputs = {}
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {str(name)[:50]!r}; the outputs are {', '.join(OUTPUTS)}")
        binary = _object(output.get("parameters"), f"the parameters of output {name}").get(
            "binary_data", binary_default
        )
        if not isinstance(binary, bool):
            raise InvalidRequest(f"the binary_data parameter of output {name} must be true or false")
        outputs[name] = binary
    return outputs


def segment_parameters(parameters: dict[str, Any]) -> SegmentParameters:
    """The request's parameters that `/segment` takes too, validated by the same model (strictly: the JSON's
    own types, so `"0.5"` or `true` is no number). Other parameters (binary_data_output) are the codec's."""
    fields = {name: value for name, value in parameters.items() if name in SegmentParameters.model_fields}
    try:
        return SegmentParameters.model_validate(fields, strict=True)
    except ValidationError as error:
        raise InvalidRequest(describe_problems(error.errors())) from None


@dataclass(frozen=True)
class Tensor:
    datatype: str
    shape: list[int]
    data: list[Any]  # flat, row-major; str for BYTES


def tensors(records: Sequence[dict[str, Any]], wanted: Sequence[str]) -> dict[str, Tensor]:
    """The instances of every image record, concatenated in input order, as the protocol's output tensors
    (each mask as its JSON object's text)."""
    count = sum(len(record["instances"]) for record in records)
    columns = instance_columns(records, wanted)
    if "masks" in columns:
        columns["masks"] = [orjson.dumps(mask).decode() for mask in columns["masks"]]
    return {name: Tensor(OUTPUTS[name][0], [count, *OUTPUTS[name][1][1:]], columns[name]) for name in wanted}


def encode_response(header: dict[str, Any], tensors: dict[str, Tensor], binary: dict[str, bool]) -> Response:
    """The protocol's JSON answer; outputs asked for as binary follow it (binary tensor extension)."""
    outputs, blobs = [], []
    for name, tensor in tensors.items():
        output: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary[name]:
            blob = tensor_bytes(tensor)
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = tensor.data
        outputs.append(output)
    body = orjson.dumps({**header, "outputs": outputs})
    if not blobs:
        return Response(body, media_type="application/json")
    return Response(
        b"".join([body, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(body))},
    )


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's elements in the binary layout both protocols share: numbers little-endian and row-major;
    BYTES elements each as a 4-byte little-endian length and its bytes (UTF-8 for text)."""
    if tensor.datatype == "BYTES":
        encoded = [item.encode() for item in tensor.data]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.asarray(tensor.data, dtype=_NUMPY_TYPES[tensor.datatype]).tobytes()
