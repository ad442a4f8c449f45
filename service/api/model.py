"""`GET /v1/model`: what is served (config, classes, device, precision, speed options, batching, defaults)."""

from fastapi import APIRouter, Depends

from centermask_client.schemas import ModelInfo
from service import openapi
from service.deps import RuntimeDep, SettingsDep, require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses={
        200: {"content": {"application/json": {"example": openapi.MODEL_INFO_EXAMPLE}}},
        **openapi.error_responses(401, 503),
    },
    summary="The served model",
)
async def model_info(runtime: RuntimeDep, settings: SettingsDep) -> ModelInfo:
    """The config, classes (names and category ids, index = class_id), device, speed options in force and
    batching settings."""
    predictor = runtime.predictor
    return ModelInfo(
        config_name=predictor.config_name,
        class_names=predictor.class_names,
        category_ids=predictor.category_ids,
        device=str(predictor.device),
        precision=str(predictor.precision),
        backend=str(predictor.backend),
        dtype=str(predictor.dtype).removeprefix("torch."),
        weights_sha256=predictor.weights_sha256,
        compiled=predictor.compiled,
        cuda_graphs=predictor.cuda_graphs,
        batching={
            "max_batch_size": runtime.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "max_queue": settings.max_queue,
            "bucket_size": predictor.bucket_size,
        },
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_agnostic_nms=settings.class_agnostic_nms,
        class_agnostic_iou=settings.class_agnostic_iou,
    )
