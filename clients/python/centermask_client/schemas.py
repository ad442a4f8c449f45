"""The wire format: the JSON bodies of the CenterMask service, defined once.

The service documents its OpenAPI schema with these models, `model.wire.records` builds the bodies they
describe, and the client parses answers into them. Only pydantic and numpy are needed, so this imports
without torch or fastapi.

Coordinates are pixels of the upright image (EXIF orientation applied), x to the right, y down. Pixel
(x, y) covers [x, x + 1) x [y, y + 1).
"""

from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from centermask_client.rle import decode as decode_rle

MaskFormat = Literal["rle", "polygon", "none"]
"""How `/segment` encodes masks: COCO compressed RLE, polygons with holes, or no masks."""
MASK_FORMATS: tuple[MaskFormat, ...] = get_args(MaskFormat)

ImageFormat = Literal["png", "jpeg"]
"""Encodings of a rendered overlay (`/segment?format=png`)."""

TilingMode = Literal["auto", "off"]
"""`auto`: an image much larger than the model's input is segmented in tiles at full resolution; `off`: never."""
TILING_MODES: tuple[TilingMode, ...] = get_args(TilingMode)
# Bounds of the tile parameters: below the smallest tile the overlap would take most of it and the count of
# tiles explodes; above the largest a tile is itself an image the model shrinks.
MIN_TILE_SIZE = 64
MAX_TILE_SIZE = 4096


class SegmentParameters(BaseModel):
    """What a request keeps of the model's output and how it encodes masks: the query parameters of
    `/segment` and `/segment/batch`, and the `parameters` of an Open Inference Protocol request. Each one
    left unset takes the service's default (its CENTERMASK_* setting)."""

    model_config = ConfigDict(frozen=True)

    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Keep detections scoring at least this. Default: CENTERMASK_SCORE_THRESHOLD.",
    )
    max_detections: int | None = Field(
        None, ge=1, description="Keep at most this many, best first. Default: CENTERMASK_MAX_DETECTIONS."
    )
    classes: list[str] | None = Field(
        None,
        description="Keep only these classes: names (case-insensitive), `class_id:N` (the contiguous index) or "
        "`category_id:N` (the dataset's id), comma-separated or repeated. A bare number is refused as "
        "ambiguous.",
        examples=["circle,ring", "category_id:1"],
    )
    mask_format: MaskFormat = Field(
        "rle",
        description="`rle`: COCO compressed RLE; `polygon`: outer ring and hole rings per region, along pixel "
        "edges; `none`: boxes only.",
    )
    class_agnostic_nms: bool | None = Field(
        None,
        description="One label per object: of detections whose boxes overlap above "
        "CENTERMASK_CLASS_AGNOSTIC_IOU, keep the best-scoring whatever its class (applied to the model's "
        "output before the other filters). Default: CENTERMASK_CLASS_AGNOSTIC_NMS.",
    )

    tiling: TilingMode | None = Field(
        None,
        description="`auto`: an image that the model's resize would shrink by CENTERMASK_TILING_FACTOR or more "
        "(and whose sides both hold a tile) is segmented tile by tile at full resolution, plus one pass of the "
        "whole image for large objects, and the instances merged, masks stitched across tiles; such an image "
        "may have up to CENTERMASK_MAX_TILED_PIXELS. `off`: always one pass of the resized image. Default: "
        "CENTERMASK_TILING.",
    )
    tile_size: int | None = Field(
        None,
        ge=MIN_TILE_SIZE,
        le=MAX_TILE_SIZE,
        description="Side of a square tile in the image's pixels. Default: CENTERMASK_TILE_SIZE, or the "
        "model's test short side (a tile then reaches the network unresized).",
    )
    tile_overlap: int | None = Field(
        None,
        ge=0,
        le=MAX_TILE_SIZE // 2,
        description="Pixels that neighbouring tiles share, at most half a tile: an object this small lies "
        "whole in some tile. Default: CENTERMASK_TILE_OVERLAP.",
    )

    @model_validator(mode="after")
    def _overlap_within_tile(self) -> "SegmentParameters":
        if (
            self.tile_size is not None
            and self.tile_overlap is not None
            and self.tile_overlap > self.tile_size // 2
        ):
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be at most half of tile_size ({self.tile_size})"
            )
        return self

    @field_validator("classes", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, value: object) -> object:
        # The Open Inference Protocol sends selectors as one comma-separated string.
        return [value] if isinstance(value, str) else value

    def selectors(self) -> list[str]:
        """The class selectors, comma-separated entries split."""
        return [part.strip() for value in self.classes or () for part in value.split(",") if part.strip()]

    def query(self) -> dict[str, str]:
        """The query string of these parameters; unset ones are left out (the server's defaults apply)."""
        params: dict[str, str] = {"mask_format": self.mask_format}
        if self.score_threshold is not None:
            params["score_threshold"] = repr(float(self.score_threshold))
        if self.max_detections is not None:
            params["max_detections"] = str(int(self.max_detections))
        if self.classes:
            params["classes"] = ",".join(self.classes)
        if self.class_agnostic_nms is not None:
            params["class_agnostic_nms"] = str(self.class_agnostic_nms).lower()
        if self.tiling is not None:
            params["tiling"] = self.tiling
        if self.tile_size is not None:
            params["tile_size"] = str(int(self.tile_size))
        if self.tile_overlap is not None:
            params["tile_overlap"] = str(int(self.tile_overlap))
        return params


class SequenceParameters(SegmentParameters):
    """The parameters of a sequence of frames: those of `/segment`, plus `track`. A stream's (the query
    string and control messages of `/segment/stream`); a video's add which frames to segment
    (`VideoParameters`)."""

    track: bool = Field(
        False,
        description="Give each instance a `track_id`: the same number on every frame where the tracker "
        "(ByteTrack: boxes associated by IoU and a Kalman motion model) follows the same object, within "
        "this video or stream connection. Needs the service's `track` extra (without it: "
        "`not_implemented`, a video's 501, a stream's error before close code 1007).",
    )

    def query(self) -> dict[str, str]:
        params = super().query()
        if self.track:
            params["track"] = "true"
        return params


class VideoParameters(SequenceParameters):
    """The query parameters of `/segment/video`: those of `/segment` and `track`, plus which frames to
    segment."""

    fps: float | None = Field(
        None,
        gt=0,
        description="Segment at most this many frames per second of video: the first frame of each "
        "1/fps-second interval of the video's timeline. Default: every frame.",
    )
    max_frames: int | None = Field(
        None, ge=1, description="Segment at most this many frames (after fps= sampling). Default: all."
    )

    def query(self) -> dict[str, str]:
        params = super().query()
        if self.fps is not None:
            params["fps"] = repr(float(self.fps))
        if self.max_frames is not None:
            params["max_frames"] = str(int(self.max_frames))
        return params


class PolygonPart(BaseModel):
    """One connected region of a mask: the outer ring minus the hole rings."""

    outer: list[float] = Field(
        description="Outer boundary as [x1, y1, x2, y2, ...], along pixel edges (integral values)."
    )
    holes: list[list[float]] = Field(
        default_factory=list, description="Boundaries of the region's holes, in the same form."
    )


class Mask(BaseModel):
    size: tuple[int, int] = Field(description="[height, width] of the image.")
    counts: str | None = Field(
        None, description="COCO compressed RLE (mask_format=rle): `pycocotools.mask.decode` reads it."
    )
    polygons: list[PolygonPart] | None = Field(
        None,
        description="mask_format=polygon: one part per connected region (8-connectivity); the mask is "
        "the union of the parts, each its outer ring minus its holes. Rasterising the rings by pixel "
        "centres gives the mask back exactly.",
    )

    def to_array(self) -> np.ndarray:
        """(height, width) bool: the decoded RLE. Raises ValueError for polygon masks."""
        if self.counts is None:
            raise ValueError("only RLE masks decode here; request mask_format=rle")
        return decode_rle({"size": list(self.size), "counts": self.counts})


class Instance(BaseModel):
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2]: left, top, right, bottom edges in pixels, clipped to the image."
    )
    score: float = Field(description="Detection confidence in 0..1: sqrt(class probability × centerness).")
    class_id: int = Field(description="Contiguous class index 0..K-1: position in `/v1/model` class_names.")
    category_id: int = Field(
        description="The dataset's id of the class: COCO category ids for the official COCO weights, the "
        "annotation file's ids for a model trained here."
    )
    class_name: str
    mask_score: float = Field(
        description="score × the predicted IoU of the mask: how good the mask is (COCO mask AP ranks by it)."
    )
    mask: Mask | None = Field(None, description="Absent with mask_format=none.")
    track_id: int | None = Field(
        None,
        description="Videos and streams with track=true (absent otherwise): the object's track, 1, 2, ... "
        "in the order tracks are confirmed, the same on every frame of this video or stream connection "
        "where the tracker follows the object. null for an instance the tracker has not confirmed (an "
        "object's first frame after the video's first, a box too unlike any track).",
    )

    def mask_array(self) -> np.ndarray:
        """(height, width) bool mask, decoded from RLE on each call. Raises ValueError without RLE."""
        if self.mask is None:
            raise ValueError("this instance has no mask; request mask_format=rle")
        return self.mask.to_array()


class Timing(BaseModel):
    decode: float = Field(description="Decoding and resizing the image, in milliseconds.")
    queue: float = Field(description="Waiting for a batch slot.")
    inference: float = Field(description="The forward pass of the batch the image was in.")
    postprocess: float = Field(description="Filtering and mask encoding.")


class TotalTiming(BaseModel):
    total: float = Field(description="The whole request, reading the body included, in milliseconds.")


class RequestTiming(Timing, TotalTiming):
    pass


class TilingInfo(BaseModel):
    """How a tiled image was cut (`tiling=auto` on an image large enough)."""

    tiles: int = Field(description="Tiles segmented, each at full resolution.")
    tile_size: int = Field(
        description="Side of a tile in the image's pixels (tiles at an edge of a narrower image are cut to it)."
    )
    tile_overlap: int = Field(description="Least overlap between neighbouring tiles, in pixels.")
    passes: int = Field(
        description="Forward passes: the tiles and one of the whole image at the model's size."
    )


class ImageResult(BaseModel):
    file: str | None = Field(description="The upload's filename; null for a raw body.")
    height: int
    width: int
    instances: list[Instance] = Field(description="Best score first.")
    tiling: TilingInfo | None = Field(
        None, description="Present only when the image was tiled: the tiles used (`tiling=auto`)."
    )


class SegmentResponse(ImageResult):
    model: str = Field(
        description="The model's name: its folder's in a model repository, else the served config's name."
    )
    model_version: str | None = Field(
        None, description="The model's version: the first 12 hex digits of its weights' SHA-256."
    )
    request_id: str = Field(description="Also in the X-Request-ID header; it tags the request's log lines.")
    timing_ms: RequestTiming


class BatchImageResult(ImageResult):
    timing_ms: Timing


class BatchResponse(BaseModel):
    model: str
    model_version: str | None = Field(
        None, description="The model's version: the first 12 hex digits of its weights' SHA-256."
    )
    request_id: str
    results: list[BatchImageResult] = Field(description="One per uploaded image, in upload order.")
    timing_ms: TotalTiming


class FrameResult(BaseModel):
    """One segmented frame of a video or a stream: its instances, as `/segment` gives them for the frame."""

    frame: int = Field(
        description="Video: the frame's position among the video's decoded frames (0-based; with fps= the "
        "lines skip frames). Stream: the position of the frame's message among the binary messages "
        "the connection has sent (0-based)."
    )
    height: int
    width: int
    instances: list[Instance] = Field(description="Best score first.")
    # Optional, so that answers of servers from before these fields still parse.
    model: str | None = Field(
        None,
        description="The model that segmented this frame: its folder's name in a model repository, else the "
        "served config's name (as `/segment`'s `model`).",
    )
    model_version: str | None = Field(
        None,
        description="The version that segmented this frame: the first 12 hex digits of its weights' SHA-256. "
        "A video's frames all have the one its request started on; a stream's frames may change version "
        "when the model is reloaded mid-stream, each saying the one that ran it.",
    )


class VideoFrameResult(FrameResult):
    """One line of `/segment/video`'s NDJSON answer."""

    time_s: float = Field(
        description="When the frame is shown, in seconds from the start of the video (its timestamp)."
    )


class StreamFrameResult(FrameResult):
    """The answer to one frame sent over `/segment/stream`."""

    dropped: int = Field(
        description="Frames of this connection skipped so far: each replaced, while waiting, by a newer one "
        "(latest-frame-wins)."
    )
    timing_ms: RequestTiming = Field(
        description="Where the frame's time went; `total` runs from the message's arrival to this answer, "
        "waiting behind the frame before it included."
    )


class StreamControl(BaseModel):
    """A JSON text message on `/segment/stream`: the API key (only as the first message, when the
    handshake carried none), and/or the parameters for the frames sent after it."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, description="The API key, when the handshake had no header with it.")
    parameters: SequenceParameters | None = Field(
        None,
        description="Replaces the connection's parameters (those of the URL's query string at first) for "
        "the frames sent after this message; unset ones take the service's defaults.",
    )


class BatchingInfo(BaseModel):
    max_batch_size: int = Field(
        description="In force for the device (CENTERMASK_MAX_BATCH_SIZE or its default)."
    )
    max_batch_delay_ms: float
    max_queue: int
    bucket_size: int = Field(
        description="Padded image sizes are multiples of this; images of one padded size share batches."
    )


class ModelInfo(BaseModel):
    name: str | None = Field(
        None, description="The model's name: its folder's in a model repository, else its config's."
    )
    model_version: str | None = Field(None, description="The first 12 hex digits of weights_sha256.")
    config_name: str
    class_names: list[str] = Field(description="Index = class_id.")
    category_ids: list[int] = Field(description="The category_id of each class, index = class_id.")
    description: str = Field(
        "",
        description="What the model knows, for people: for the bundled demo model, that it knows five synthetic "
        "shapes and nothing else, and the command that serves a COCO checkpoint instead.",
    )
    bundled: bool = Field(
        False, description="Whether this is the bundled demo model (recognised by its weights' SHA-256)."
    )
    device: str
    precision: str = Field(description="fp32 (exact to the official outputs), bf16, fp16 or int8.")
    backend: str = Field(
        "torch", description="What runs the network: torch, or onnxruntime (the network exported to ONNX)."
    )
    dtype: str = Field(description="What the network's floating-point layers compute in.")
    weights_sha256: str
    compiled: bool = Field(
        False,
        description="Whether the backbone, FPN and FCOS head run compiled by torch.compile (CENTERMASK_COMPILE "
        "on, and compiling did not fail).",
    )
    cuda_graphs: bool = Field(
        False,
        description="Whether they replay CUDA graphs (CENTERMASK_CUDA_GRAPHS on, and no capture failed).",
    )
    batching: BatchingInfo
    score_threshold: float = Field(description="Default of the score_threshold parameter.")
    max_detections: int = Field(description="Default of the max_detections parameter.")
    class_agnostic_nms: bool = Field(description="Default of the class_agnostic_nms parameter.")
    class_agnostic_iou: float = Field(description="Box IoU above which class-agnostic NMS merges detections.")


class ModelSummary(BaseModel):
    """One model of `GET /v1/models`: loaded (READY), LOADING, or in the repository but UNAVAILABLE."""

    name: str
    model_version: str | None = Field(None, description="The first 12 hex digits of its weights' SHA-256.")
    state: str = Field(description="READY, LOADING or UNAVAILABLE (not loaded; `reason` says why).")
    reason: str = ""
    default: bool = Field(False, description="Whether requests that name no model get this one.")
    config_name: str | None = None
    class_names: list[str] = Field(default_factory=list, description="Index = class_id.")
    category_ids: list[int] = Field(default_factory=list)
    description: str = Field("", description="What the model knows, for people (as in `GET /v1/model`).")
    bundled: bool = Field(False, description="Whether this is the bundled demo model.")
    device: str | None = None
    precision: str | None = None
    backend: str | None = None


class ModelList(BaseModel):
    default: str | None = Field(description="The model of requests that name none.")
    models: list[ModelSummary]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image, overloaded.")
    message: str = Field(description="What went wrong, for people.")
    index: int | None = Field(
        None,
        description="The failing image of a batch request (its position); the failing frame of a video or "
        "stream (its `frame`).",
    )
    file: str | None = Field(None, description="The failing image of a batch request: its upload's filename.")


class ErrorBody(BaseModel):
    error: ErrorDetail
