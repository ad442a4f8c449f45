"""`GET /healthz` (liveness), `/readyz` (readiness) and `/metrics` (Prometheus): open unless
CENTERMASK_PROTECT_PROBES, for probes and scrapers."""

from fastapi import APIRouter, Depends
from starlette.responses import Response

from service import openapi
from service.deps import MetricsDep, RuntimeDep, require_api_key_for_probes
from service.errors import NotReady, error_response
from service.metrics import CONTENT_TYPE
from service.responses import OrjsonResponse
from service.runtime import Phase

router = APIRouter(dependencies=[Depends(require_api_key_for_probes)])


@router.get(
    "/healthz",
    responses={
        200: {"content": {"application/json": {"example": {"status": "alive", "phase": "ready"}}}},
        503: openapi.error_responses(503)[503]
        | {"description": "The model failed to load (the process is stopping) or the worker died."},
    },
    summary="Liveness: the process and its inference worker are alive",
)
async def healthz(runtime: RuntimeDep) -> Response:
    """200 while the process and its inference worker are alive, whether or not the model has loaded."""
    if not runtime.is_alive:
        return error_response(503, "not_alive", f"the service is {runtime.phase}")
    return OrjsonResponse({"status": "alive", "phase": runtime.phase})


@router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready"}}}},
        503: openapi.error_responses(503)[503] | {"description": "Loading, or draining for shutdown."},
    },
    summary="Readiness: every model is loaded, warm, and the server is not draining",
)
async def readyz(runtime: RuntimeDep) -> Response:
    """200 once every model meant to be loaded (the repository's, less those unloaded) is loaded and warm;
    503 `not_ready` while one loads, while draining, and when no model is loaded at all. A model being
    reloaded stays ready: its former version serves until the new one is warm."""
    if runtime.phase is not Phase.READY:
        return NotReady(f"the service is {runtime.phase}").to_response()
    if not runtime.is_ready:
        waiting = [entry.name for entry in runtime.models.index() if entry.state == "LOADING"]
        message = f"models still loading: {', '.join(waiting)}" if waiting else "no model is loaded"
        return NotReady(message).to_response()
    return OrjsonResponse({"status": "ready"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        }
    },
    summary="Prometheus metrics",
)
async def metrics(registry: MetricsDep) -> Response:
    """Request, queue, batch and model metrics: docs/metrics.md says what each means."""
    return Response(registry.render(), media_type=CONTENT_TYPE)
