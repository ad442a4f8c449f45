"""What the OpenAPI document says beyond the routes' own signatures.

Examples (a real answer of the bundled model, recorded by `python -m training.examples`), every error
status with its schema and codes, and the headers every answer carries: X-Request-ID everywhere,
Retry-After with 503, WWW-Authenticate with 401.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from centermask_client.schemas import ErrorBody, StreamControl, StreamFrameResult, VideoFrameResult
from model.wire.records import batch_response, error_body
from service.errors import RETRY_AFTER_S
from service.images import MEDIA_TYPES
from service.uploads import VIDEO_MEDIA_TYPES

# The demo page's example images and the bundled model's recorded answer for the first.
EXAMPLES_DIR = Path(__file__).parent / "static" / "examples"
RESPONSE_EXAMPLE = EXAMPLES_DIR / "segment-response.json"

# Per status: the codes it can carry, each with a message like the service's.
ERROR_CODES: dict[int, dict[str, str]] = {
    400: {
        "invalid_image": "cannot identify the image; send JPEG, PNG, WebP, BMP or TIFF",
        "invalid_request": "malformed multipart body: missing boundary",
    },
    401: {"unauthorized": "a valid API key is required, in X-API-Key or Authorization: Bearer"},
    404: {
        "unknown_model": "unknown model 'yolo': this server serves 'people', 'shapes'",
        "not_found": "Not Found",
    },
    413: {
        "image_too_large": "the request body is larger than 20971520 bytes",
        "too_many_pixels": "the image has 9000×9000 pixels, more than the limit of 40000000",
        "too_many_images": "too many images: this endpoint takes at most 32",
    },
    415: {
        "unsupported_media_type": "Content-Type text/plain is not supported; send multipart/form-data "
        "with the field 'image', or the image itself as one of image/jpeg, image/png, image/webp, "
        "image/bmp, image/tiff"
    },
    422: {
        "invalid_parameter": "ambiguous class '3': write class_id:3 (the contiguous index) or "
        "category_id:3 (the dataset's id)"
    },
    500: {
        "inference_failed": "inference failed: RuntimeError: CUDA error: an illegal memory access",
        "internal_error": "internal error; the request id is in the X-Request-ID header",
    },
    503: {
        "not_ready": "the service is loading",
        "overloaded": "the inference queue is full; retry later",
    },
    504: {"deadline_exceeded": "the request took longer than 30.0 s"},
}
_ERROR_DESCRIPTIONS = {
    400: "The image cannot be decoded (corrupt, truncated, empty) or the multipart body is malformed.",
    401: "An API key is configured and the request lacks it or has another one.",
    404: "No such path, or no model of the name given (`model=`).",
    413: "More bytes than CENTERMASK_MAX_IMAGE_BYTES, more pixels than CENTERMASK_MAX_IMAGE_PIXELS, "
    "or more images than CENTERMASK_MAX_IMAGES_PER_REQUEST.",
    415: "Not an image format the service reads, or another Content-Type.",
    422: "A bad query parameter, an unknown class, or a missing multipart field.",
    500: "The forward pass failed for this image (even alone), or an unexpected error.",
    503: "Not ready (loading, draining) or overloaded (queue full): retry after Retry-After seconds.",
    504: "The request took longer than CENTERMASK_REQUEST_TIMEOUT_S.",
}
SEGMENT_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503, 504)

_HEADERS = {
    "X-Request-ID": {
        "description": "The request's id, in every answer and in the service's log lines. A client may "
        "send its own (1-128 characters of A-Za-z0-9._:/+=-); otherwise one is made.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "example": RETRY_AFTER_S},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: Bearer.",
        "schema": {"type": "string"},
    },
}


def error_responses(
    *statuses: int,
    codes: dict[int, dict[str, str]] = ERROR_CODES,
    descriptions: dict[int, str] = _ERROR_DESCRIPTIONS,
) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: the error body schema, and an example per code."""
    return {
        status: {
            "model": ErrorBody,
            "description": descriptions[status],
            "content": {
                "application/json": {
                    "examples": {
                        code: {"value": error_body(code, message)} for code, message in codes[status].items()
                    }
                }
            },
        }
        for status in statuses
    }


# /segment/video answers these before its first line; later failures are its last line instead.
VIDEO_ERROR_CODES: dict[int, dict[str, str]] = {
    **ERROR_CODES,
    400: {
        "invalid_video": "cannot read the video's header: it is truncated or corrupt",
        "invalid_request": "malformed multipart body: missing boundary",
    },
    413: {
        "video_too_large": "the request body is larger than 209715200 bytes",
        "too_many_pixels": "the video's frames have 7680×4320 pixels, more than the limit of 8294400",
        "video_too_long": "the video lasts 3600.0 s, more than the limit of 600 s",
    },
    415: {
        "unsupported_media_type": "prores video is not supported; send MP4, MOV, MKV or WebM with H.264, "
        "HEVC, VP8, VP9, AV1, MPEG-4 or MJPEG video"
    },
    501: {
        "not_implemented": "this service cannot read videos: it was installed without PyAV "
        "(centermask-serve[video])"
    },
}
_VIDEO_ERROR_DESCRIPTIONS = {
    **_ERROR_DESCRIPTIONS,
    400: "The video cannot be read (corrupt, truncated, no decodable frame) or the multipart body is malformed.",
    413: "More bytes than CENTERMASK_MAX_VIDEO_BYTES, frames of more pixels than CENTERMASK_MAX_VIDEO_PIXELS, "
    "or longer than CENTERMASK_MAX_VIDEO_DURATION_S (as the header says).",
    415: "Not a container or codec the service reads, or another Content-Type.",
    500: "An unexpected error before the first line.",
    501: "This installation has no video support (PyAV, the `video` extra), or no tracking for "
    "track=true (supervision, the `track` extra).",
}
VIDEO_ERRORS = (400, 401, 404, 413, 415, 422, 500, 501, 503)
VIDEO_LINE_EXAMPLE = (
    '{"frame":0,"time_s":0.0,"height":480,"width":640,"instances":[{"box":[120.0,97.8,230.8,210.2],'
    '"score":0.84,"class_id":0,"category_id":1,"class_name":"circle","mask_score":0.88,'
    '"mask":{"size":[480,640],"counts":"WYS1R1Y82N2L6J6L2N2N4I8K3jHlMo6U2PIlMo6U2RIj"}}],'
    '"model":"people","model_version":"5f0c3a2b9e71"}\n'
    '{"frame":1,"time_s":0.033333,"height":480,"width":640,"instances":[],"model":"people",'
    '"model_version":"5f0c3a2b9e71"}\n'
    '{"error":{"code":"invalid_video","message":"cannot decode the video after 2 frames: it is truncated or '
    'corrupt","index":2}}\n'
)


def video_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "One `VideoFrameResult` per line, in frame order, written as each frame is done; "
            "a failure after the first line ends the answer with one `ErrorBody` line (`index`: the frame). "
            "`X-Video-Frames` has the number of lines to expect when the video's header gives it.",
            "headers": {
                "X-Video-Frames": {
                    "description": "The expected number of frame lines (from the video's header).",
                    "schema": {"type": "integer"},
                }
            },
            "content": {
                "application/x-ndjson": {
                    "schema": {"$ref": "#/components/schemas/VideoFrameResult"},
                    "example": VIDEO_LINE_EXAMPLE,
                }
            },
        },
        **error_responses(*VIDEO_ERRORS, codes=VIDEO_ERROR_CODES, descriptions=_VIDEO_ERROR_DESCRIPTIONS),
    }


def segment_responses() -> dict[int | str, dict[str, Any]]:
    example = response_example()
    return {
        200: {
            "description": "The instances, best first (format=json), or the image with them drawn "
            "(format=png or jpeg).",
            "content": {
                "application/json": {"example": example},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(*SEGMENT_ERRORS),
    }


def batch_responses() -> dict[int | str, dict[str, Any]]:
    example = response_example()
    timing = {key: value for key, value in example["timing_ms"].items() if key != "total"}
    record = {key: example[key] for key in ("file", "height", "width", "instances")}
    batch = batch_response(
        [(record, timing)],
        model=example["model"],
        request_id=example["request_id"],
        total_ms=example["timing_ms"]["total"],
    )
    return {
        200: {
            "description": "One result per image, in upload order.",
            "content": {"application/json": {"example": batch}},
        },
        **error_responses(*SEGMENT_ERRORS),
    }


def response_example() -> dict[str, Any]:
    """The recorded `/segment` answer for the first example."""
    return json.loads(RESPONSE_EXAMPLE.read_text())


MODEL_INFO_EXAMPLE = {
    "config_name": "centermask_lite_V_19_slim_eSE_FPN_ms_4x",
    "class_names": ["circle", "rectangle", "triangle", "star", "ring"],
    "category_ids": [1, 2, 3, 4, 5],
    "description": "The bundled demo model: it knows 5 synthetic shapes drawn by code (circle, rectangle, "
    "triangle, star, ring) and nothing else. ...",
    "bundled": True,
    "device": "cuda:0",
    "precision": "fp16",
    "backend": "torch",
    "dtype": "float16",
    "weights_sha256": "9b1c0f3e2d4a5b6c7d8e9f00112233445566778899aabbccddeeff0011223344",
    "compiled": False,
    "cuda_graphs": True,
    "batching": {"max_batch_size": 8, "max_batch_delay_ms": 5.0, "max_queue": 64, "bucket_size": 128},
    "score_threshold": 0.3,
    "max_detections": 100,
    "class_agnostic_nms": True,
    "class_agnostic_iou": 0.7,
}

IMAGE_BODY = {
    "description": "The image: the multipart file field `image`, or the raw bytes with their Content-Type.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
                # The body holds the one field: others are refused, not ignored.
                "additionalProperties": False,
            }
        },
        **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in MEDIA_TYPES},
    },
    "required": True,
}
IMAGES_BODY = {
    "description": "The images: the repeated multipart file field `images`.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                    }
                },
                "required": ["images"],
                "additionalProperties": False,
            }
        }
    },
    "required": True,
}


VIDEO_BODY = {
    "description": "The video: the multipart file field `video`, or the raw bytes with their Content-Type.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"video": {"type": "string", "format": "binary"}},
                "required": ["video"],
            }
        },
        **{
            media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in VIDEO_MEDIA_TYPES
        },
    },
    "required": True,
}


def wire_schemas() -> dict[str, Any]:
    """Component schemas of bodies that no route's signature declares: a video's NDJSON line, and the
    messages of the `/segment/stream` WebSocket (which OpenAPI cannot describe as an operation)."""
    schemas: dict[str, Any] = {}
    for model in (VideoFrameResult, StreamFrameResult, StreamControl):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas |= schema.pop("$defs", {})
        schemas[model.__name__] = schema
    return schemas


def install_openapi(
    app: FastAPI, schemas: dict[str, Any] | None = None, *, secured: frozenset[tuple[str, str]] = frozenset()
) -> None:
    """Make `app.openapi()` add the shared headers to every operation, and `schemas` to the components
    (those of request bodies that are read by hand). `secured`: the (path, method) operations that need the
    API key as the service is configured; the others are declared open, and with none the document has no
    security schemes (what a client generator or a gateway reads)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _add_headers(schema)
            _declare_security(schema, secured)
            components = schema["components"].setdefault("schemas", {})
            # The routes' own schemas of a model win over a hand-made one of the same name.
            for name, value in (schemas or {}).items():
                components.setdefault(name, value)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_security(schema: dict[str, Any], secured: frozenset[tuple[str, str]]) -> None:
    for path, path_item in schema["paths"].items():
        for method, operation in path_item.items():
            if (path, method.upper()) not in secured:
                operation.pop("security", None)
    if not secured:
        schema["components"].pop("securitySchemes", None)


def _add_headers(schema: dict[str, Any]) -> None:
    schema.setdefault("components", {})["headers"] = _HEADERS
    request_id = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": _HEADERS["X-Request-ID"]["description"],
        # Any value is taken: one outside the pattern the description gives is replaced, not refused.
        "schema": {"type": "string"},
    }
    for path_item in schema["paths"].values():
        for operation in path_item.values():
            operation.setdefault("parameters", []).append(request_id)
            for status, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
                if status == "503":
                    headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
                if status == "401":
                    headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
