"""The Open Inference Protocol's meaning, whatever carries it: which model a name resolves to, readiness,
model metadata, inference from a parsed request to output tensors, and what the repository extension's
load and unload parameters mean.

HTTP (`service.v2.endpoints`, bodies by `service.v2.codec`) and gRPC (`service.grpc`, messages by
`service.grpc.codec`) differ only in how requests and answers are encoded; both call what is here, so the
same request gets the same instances, errors and limits over either.

Models are found by name through the registry (`ModelRegistry.lease`, service/registry.py) by both, as
`/segment` finds them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequest, NotReady, WorkerFailed
from service.metrics import Protocol
from service.options import resolve_options
from service.runtime import ImageFailed, Phase, Runtime, Segmented, ServedModel
from service.settings import Settings
from service.uploads import Uploads
from service.v2.codec import ParsedRequest, Tensor, segment_parameters, tensors
from service.v2.models import EXTENSIONS, INPUT, OUTPUTS, PLATFORMS


def require_ready(runtime: Runtime) -> None:
    """The server is ready: serving, and every model meant to be loaded is (NotReady while one loads)."""
    require_serving(runtime)
    if not runtime.is_ready:
        raise NotReady("a model is still loading" if runtime.models.loaded() else "no model is loaded")


def require_serving(runtime: Runtime) -> None:
    """NotReady while starting or draining, WorkerFailed once failed: what a model's readiness needs
    beyond the model itself."""
    if runtime.phase is Phase.FAILED:
        raise WorkerFailed("the service has failed and awaits a restart")
    if runtime.phase is not Phase.READY:
        raise NotReady(f"the service is {runtime.phase}")


def require_live(runtime: Runtime) -> None:
    if not runtime.is_alive:
        raise WorkerFailed(f"the service is {runtime.phase}")


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "centermask-serve", "version": version, "extensions": EXTENSIONS}


def model_metadata(served: ServedModel) -> dict[str, Any]:
    """The model's name, versions, platform and tensors (`-1`: the images, or all their instances)."""
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORMS[served.predictor.backend],
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
    served: ServedModel,
    settings: Settings,
    uploads: Uploads,
    model_name: str,
    parsed: ParsedRequest,
    *,
    protocol: Protocol,
    until: Callable[[Awaitable[list[Segmented]]], Awaitable[list[Segmented]]] | None = None,
    client_deadline_s: float | None = None,
) -> InferAnswer:
    """Segment a parsed request's images (one batch) on an admitted, leased model; its answer's tensors.

    `protocol` is what carried it (it labels the metrics); `until` wraps the segmentation (HTTP cancels it
    when the client leaves); `client_deadline_s` is the client's own deadline (gRPC's), which binds when
    shorter than the service's.
    """
    options = resolve_options(settings, served.predictor, segment_parameters(parsed.parameters))
    outputs = parsed.outputs
    if outputs is None:
        wanted = [name for name in OUTPUTS if name != "masks" or options.mask_format != "none"]
        outputs = dict.fromkeys(wanted, parsed.binary_output)
    elif "masks" in outputs and options.mask_format == "none":
        raise InvalidRequest("the output 'masks' was asked for with mask_format none")
    images = uploads.images(parsed.images)
    work = served.segment(images, options, protocol=protocol, client_deadline_s=client_deadline_s)
    try:
        results = await (until(work) if until is not None else work)
    except ImageFailed as failed:
        raise failed.error.for_image(failed.index) from None
    header: dict[str, Any] = {"model_name": model_name, "model_version": served.version}
    if parsed.id is not None:
        header["id"] = parsed.id
    tiles = [result.record.get("tiling", {}).get("tiles", 0) for result in results]
    if any(tiles):
        # The tiles each image was segmented in (0: not tiled), as a string: the protocol's parameters hold
        # scalars only.
        header["parameters"] = {"tiles": ",".join(map(str, tiles))}
    return InferAnswer(
        header, tensors([result.record for result in results], list(outputs)), outputs, results
    )


# Triton's load parameters: `config`, a model configuration (JSON text) for this load, and `file:<path>`,
# the contents of a file of a model folder sent with the load. Unload's `unload_dependents` means nothing
# here (no ensembles), and tritonclient sends it.
LOAD_CONFIG = "config"
LOAD_FILE_PREFIX = "file:"
UNLOAD_PARAMETERS = ("unload_dependents",)


def load_config(parameters: Mapping[str, Any]) -> str | None:
    """The `config` of a load's parameters: the model's config.json text for this load (None without one).
    InvalidRequest for files, a `config` that is not a string, or any other parameter."""
    files = sorted(name for name in parameters if name.startswith(LOAD_FILE_PREFIX))
    if files:
        raise InvalidRequest(
            f"a load cannot upload files (got {', '.join(files)[:200]}): a model's weights must be in its "
            "repository folder, as DIR/NAME/model.pth; its options may come with the load as `config`"
        )
    unknown = sorted(set(parameters) - {LOAD_CONFIG})
    if unknown:
        raise InvalidRequest(
            f"unsupported load parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))[:200]}: "
            "a load takes `config`, the JSON text of the model's config.json for this load"
        )
    config = parameters.get(LOAD_CONFIG)
    if config is not None and not isinstance(config, str):
        raise InvalidRequest(
            "the load parameter `config` must be a string: the JSON text of the model's config.json, e.g. "
            '"{\\"precision\\": \\"bf16\\"}"'
        )
    return config


def check_unload_parameters(parameters: Mapping[str, Any]) -> None:
    """InvalidRequest for an unload parameter other than `unload_dependents` (which changes nothing here)."""
    unknown = sorted(set(parameters) - set(UNLOAD_PARAMETERS))
    if unknown:
        raise InvalidRequest(
            f"unsupported unload parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))[:200]}: an unload takes only `unload_dependents`"
        )
