"""The Open Inference Protocol's meaning, whatever carries it: which model a name resolves to, readiness,
model metadata, and inference from a parsed request to output tensors.

HTTP (`service.v2.endpoints`, bodies by `service.v2.codec`) and gRPC (`service.grpc`, messages by
`service.grpc.codec`) differ only in how requests and answers are encoded; both call what is here, so the
same request gets the same instances, errors and limits over either.

`ModelCatalog` is the one place a model name is resolved: today one model, named by its config or
`centermask`, version `1`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequest, NotReady, ServiceError, WorkerFailed
from service.options import resolve_options
from service.runtime import ImageFailed, Phase, Runtime, Segmented
from service.settings import Settings
from service.uploads import Uploads
from service.v2.codec import ParsedRequest, Tensor, segment_parameters, tensors
from service.v2.models import EXTENSIONS, INPUT, MODEL_ALIAS, MODEL_VERSION, OUTPUTS, PLATFORMS


class UnknownModel(ServiceError):
    status_code = 404
    code = "not_found"


class ModelCatalog:
    """The models this server serves, by name: what `/v2/models/{name}` and gRPC's `model_name` resolve
    through. Today one model (the runtime's), named by its config or `centermask`; its only version is 1."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def server(self) -> Runtime:
        """What the server-wide probes report on."""
        return self._runtime

    def resolve(self, name: str, version: str | None) -> Runtime:
        """The runtime serving `name` (and `version`, when given: empty is none); UnknownModel otherwise."""
        served = self._runtime.predictor.config_name
        if name not in (served, MODEL_ALIAS):
            raise UnknownModel(
                f"unknown model {name[:100]!r}: this server serves {served!r} (or {MODEL_ALIAS!r})"
            )
        if version and version != MODEL_VERSION:
            raise UnknownModel(
                f"unknown version {version[:20]!r} of {name}: the only one is {MODEL_VERSION!r}"
            )
        return self._runtime


def require_ready(runtime: Runtime) -> None:
    """NotReady while loading or draining, WorkerFailed once failed."""
    if runtime.phase is Phase.FAILED:
        raise WorkerFailed("the service has failed and awaits a restart")
    if runtime.phase is not Phase.READY:
        raise NotReady(f"the service is {runtime.phase}")


def require_live(runtime: Runtime) -> None:
    if not runtime.is_alive:
        raise WorkerFailed(f"the service is {runtime.phase}")


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "centermask-serve", "version": version, "extensions": EXTENSIONS}


def model_metadata(runtime: Runtime) -> dict[str, Any]:
    """The model's name, versions, platform and tensors (`-1`: the images, or all their instances)."""
    predictor = runtime.predictor
    return {
        "name": predictor.config_name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORMS[predictor.backend],
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": shape}
            for name, (datatype, shape) in OUTPUTS.items()
        ],
    }


@dataclass(frozen=True)
class InferAnswer:
    """An infer request's answer before encoding: the header fields, the output tensors (in the order
    asked for) and, per output, whether it was asked for as binary (HTTP only)."""

    header: dict[str, Any]
    tensors: dict[str, Tensor]
    binary: dict[str, bool]
    results: list[Segmented]


async def infer(
    runtime: Runtime,
    settings: Settings,
    uploads: Uploads,
    model_name: str,
    parsed: ParsedRequest,
    *,
    until: Callable[[Awaitable[list[Segmented]]], Awaitable[list[Segmented]]] | None = None,
    client_deadline_s: float | None = None,
) -> InferAnswer:
    """Segment a parsed request's images (one batch) on an admitted runtime; its answer's tensors.

    `until` wraps the segmentation (HTTP cancels it when the client leaves); `client_deadline_s` is the
    client's own deadline (gRPC's), which binds when shorter than the service's.
    """
    options = resolve_options(settings, runtime.predictor, segment_parameters(parsed.parameters))
    outputs = parsed.outputs
    if outputs is None:
        wanted = [name for name in OUTPUTS if name != "masks" or options.mask_format != "none"]
        outputs = dict.fromkeys(wanted, parsed.binary_output)
    elif "masks" in outputs and options.mask_format == "none":
        raise InvalidRequest("the output 'masks' was asked for with mask_format none")
    images = uploads.images(parsed.images)
    work = runtime.segment(images, options, client_deadline_s=client_deadline_s)
    try:
        results = await (until(work) if until is not None else work)
    except ImageFailed as failed:
        raise failed.error.for_image(failed.index) from None
    header: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if parsed.id is not None:
        header["id"] = parsed.id
    return InferAnswer(
        header, tensors([result.record for result in results], list(outputs)), outputs, results
    )
