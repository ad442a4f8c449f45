"""`GET /v1/models`: every model of the server, and `GET /v1/model`: one of them (`?model=NAME`, default
the default model) in detail (config, classes, device, precision, speed options, batching, defaults)."""

from fastapi import APIRouter, Depends

from centermask_client.schemas import ModelInfo, ModelList, ModelSummary
from model.weights.description import describe
from service import openapi
from service.deps import ModelDep, ModelsDep, SettingsDep, require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses={
        200: {"content": {"application/json": {"example": openapi.MODEL_INFO_EXAMPLE}}},
        **openapi.error_responses(401, 404, 422, 503),
    },
    summary="A served model",
)
async def model_info(model: ModelDep, settings: SettingsDep) -> ModelInfo:
    """The model's name and version, config, classes (names and category ids, index = class_id), what it
    knows in a sentence, device, speed options in force and batching settings."""
    predictor = model.predictor
    description = describe(predictor.class_names, predictor.weights_sha256)
    return ModelInfo(
        name=model.name,
        model_version=model.version,
        config_name=predictor.config_name,
        class_names=predictor.class_names,
        category_ids=predictor.category_ids,
        description=description.text,
        bundled=description.bundled,
        device=str(predictor.device),
        precision=str(predictor.precision),
        backend=str(predictor.backend),
        dtype=str(predictor.dtype).removeprefix("torch."),
        weights_sha256=predictor.weights_sha256,
        compiled=predictor.compiled,
        cuda_graphs=predictor.cuda_graphs,
        batching={
            "max_batch_size": model.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "max_queue": settings.max_queue,
            "bucket_size": predictor.bucket_size,
        },
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_agnostic_nms=settings.class_agnostic_nms,
        class_agnostic_iou=settings.class_agnostic_iou,
    )


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=openapi.error_responses(401),
    summary="Every model: loaded, loading, or in the repository and not loaded",
)
async def models(registry: ModelsDep) -> ModelList:
    """Each model's name, version, state and classes; `default` is the model of requests that name none."""
    loaded = {served.name: served for served in registry.loaded()}
    default = registry.default_name()
    summaries = []
    for entry in registry.index():
        served = loaded.get(entry.name)
        summary = ModelSummary(
            name=entry.name,
            model_version=entry.version or None,
            state=entry.state,
            reason=entry.reason,
            default=entry.name == default,
        )
        if served is not None:
            predictor = served.predictor
            description = describe(predictor.class_names, predictor.weights_sha256)
            summary = summary.model_copy(
                update={
                    "config_name": predictor.config_name,
                    "class_names": predictor.class_names,
                    "category_ids": predictor.category_ids,
                    "description": description.text,
                    "bundled": description.bundled,
                    "device": str(predictor.device),
                    "precision": str(predictor.precision),
                    "backend": str(predictor.backend),
                }
            )
        summaries.append(summary)
    return ModelList(default=default, models=summaries)
