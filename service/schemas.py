"""The wire format on the service's side.

The models are defined once, in `centermask_client.schemas`, and shared with the client; the service
uses them to document its OpenAPI schema, not to validate its answers, which would cost more than the
inference on large mask payloads. Handlers build plain dicts (`model.wire`) and return them through
`OrjsonResponse`.
"""

from typing import Any

import orjson
from starlette.responses import JSONResponse

from centermask_client.schemas import (
    BatchResponse,
    ErrorBody,
    ImageFormat,
    ImageResult,
    MaskFormat,
    ModelInfo,
    SegmentResponse,
)

__all__ = [
    "BatchResponse",
    "ErrorBody",
    "ImageFormat",
    "ImageResult",
    "MaskFormat",
    "ModelInfo",
    "OrjsonResponse",
    "SegmentResponse",
]


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
