"""`POST /segment/video`: a video file in, one JSON line per segmented frame out, as each is ready."""

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from centermask_client.schemas import VideoParameters
from service import openapi, tracking
from service.deps import MetricsDep, ModelDep, RuntimeDep, SettingsDep, UploadsDep, require_api_key
from service.metrics import Protocol
from service.options import resolve_options
from service.responses import NdjsonResponse
from service.video import frame_lines, open_upload

router = APIRouter(dependencies=[Depends(require_api_key)])

# The expected number of lines, from the video's header (absent when it does not say): progress bars.
FRAMES_HEADER = "X-Video-Frames"


@router.post(
    "/segment/video",
    response_class=NdjsonResponse,
    status_code=200,
    responses=openapi.video_responses(),
    openapi_extra={"requestBody": openapi.VIDEO_BODY},
    summary="Segment the frames of a video, answered line by line",
)
async def segment_video(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    uploads: UploadsDep,
    model: ModelDep,
    parameters: Annotated[VideoParameters, Query()],
) -> Response:
    """Segment the frames of an MP4, MOV, MKV or WebM video (H.264, HEVC, VP8, VP9, AV1, MPEG-4, MJPEG).

    The answer is newline-delimited JSON (`application/x-ndjson`): one line per segmented frame, in frame
    order, `{"frame", "time_s", "height", "width", "instances"}`, written as each frame is done; frames
    are decoded and queued a few at a time, so they batch. `fps=` samples frames, `max_frames=` bounds them;
    `track=true` gives each instance a `track_id`, stable across the video's frames (501 without the
    service's `track` extra); the other parameters are those of `/segment`. Anything wrong with the file
    is answered with a status before any line; a failure later ends the answer with one `{"error": {...}}`
    line whose `index` is the frame concerned.
    """
    options = resolve_options(settings, model.predictor, parameters)
    if parameters.track and not tracking.loaded():
        await runtime.in_cpu_pool(tracking.load_or_refuse)
    # The request stays admitted (and the drain waits for it), and holds its model (a reload waits for
    # it), until its last line is written.
    admission = contextlib.AsyncExitStack()
    admission.enter_context(model.leased())
    await admission.enter_async_context(runtime.admitted(model))
    try:
        upload = await uploads.read_video(request)
        opened = await open_upload(runtime, upload.data, settings, parameters.fps, parameters.max_frames)
    except BaseException:
        await admission.aclose()
        raise

    async def on_close(gone: bool) -> None:
        if gone:
            metrics.rejected.labels("client_gone", Protocol.HTTP).inc()
        await admission.aclose()

    headers = {"X-Model": model.name, "X-Model-Version": model.version}
    if opened.expected_frames is not None:
        headers[FRAMES_HEADER] = str(opened.expected_frames)
    tracker = tracking.Tracker(opened.frame_rate) if parameters.track else None
    lines = frame_lines(runtime, model, opened, options, metrics, tracker)
    return NdjsonResponse(lines, headers=headers, on_close=on_close)
