"""`/segment/stream`: a WebSocket of encoded frames in, their instances out, latest-frame-wins
(service/stream.py has the protocol and its close codes)."""

import logging

from fastapi import APIRouter, WebSocket

from service.errors import InternalError, InvalidParameter, NotImplementedHere, ServiceError, UnknownModel
from service.metrics import Metrics, Protocol
from service.runtime import Runtime
from service.settings import Settings
from service.stream import CloseCode, Closing, StreamSession, close, query_parameters, refusal

logger = logging.getLogger(__name__)

router = APIRouter()


@router.websocket("/segment/stream")
async def segment_stream(websocket: WebSocket) -> None:
    """Binary messages are frames (JPEG, PNG, WebP, BMP, TIFF); text messages are JSON `StreamControl`s.
    Each frame taken is answered with a `StreamFrameResult`; frames that wait while a newer one arrives
    are skipped (latest-frame-wins)."""
    state = websocket.app.state
    runtime: Runtime = state.runtime
    settings: Settings = state.settings
    metrics: Metrics = state.metrics
    await websocket.accept()
    session = StreamSession(websocket, runtime, settings, metrics)
    closing: Closing | None = None
    started = False
    try:
        closing = refusal(websocket, settings, state.open_streams) or await session.authenticate()
        if closing is None:
            session.model_name = websocket.query_params.get("model")
            model = runtime.models.get(session.model_name)
            async with runtime.admitted(model):
                parameters = session.first_parameters or query_parameters(websocket)
                await session.set_parameters(parameters)
                state.open_streams += 1
                started = True
                try:
                    closing = await session.run()
                finally:
                    state.open_streams -= 1
    except (InvalidParameter, NotImplementedHere) as error:  # parameters this service cannot take
        closing = Closing(CloseCode.INVALID_DATA, error)
    except UnknownModel as error:
        closing = Closing(CloseCode.INVALID_DATA, error)
    except ServiceError as error:  # not ready, draining, failed worker: refused at the door
        closing = Closing(CloseCode.TRY_AGAIN_LATER, error)
    except Exception:
        logger.exception("a stream failed")
        closing = Closing(CloseCode.INTERNAL_ERROR, InternalError("internal error; reconnect"))
    finally:
        refused = closing.error if closing is not None and not started else None
        if refused is not None and refused.rejection is not None:
            # Turned away at the door (too many streams, not ready, a failed worker), as /segment counts its own.
            metrics.rejected.labels(refused.rejection, Protocol.HTTP).inc()
        logger.info(
            "stream closed",
            extra={
                "frames": session.received,
                "answered": session.answered,
                "dropped": session.dropped,
                "close_code": int(closing.code) if closing else "client",
            },
        )
        await close(websocket, session, closing)
