"""The service on the onnxruntime backend (CENTERMASK_BACKEND=onnxruntime): the same answers as on torch."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.rule_weights import match_instances
from tests.service.helpers import Served, png_body, random_image, serve, tiny_settings

IMAGE = random_image(7, 240, 320)


@pytest.mark.anyio
async def test_segment_answers_what_the_torch_backend_answers(
    served: Served, tiny_weights: Path, tiny_onnx: Path
) -> None:
    expected = (await served.client.post("/segment", params={"score_threshold": 0}, **png_body(IMAGE))).json()
    settings = tiny_settings(tiny_weights, backend="onnxruntime", onnx_model=tiny_onnx, max_batch_size=1)
    async with serve(settings) as onnx_served:
        client = onnx_served.client
        answer = (await client.post("/segment", params={"score_threshold": 0}, **png_body(IMAGE))).json()
        info = (await client.get("/v1/model")).json()
        metadata = (await client.get("/v2/models/centermask")).json()
    assert expected["instances"]
    report = match_instances(expected["instances"], answer["instances"])
    assert report.passes and report.matched == len(expected["instances"]) == len(answer["instances"]), report
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert metadata["platform"] == "onnxruntime_onnx"


def test_onnx_graphs_need_the_onnxruntime_backend(tiny_onnx: Path) -> None:
    with pytest.raises(ValidationError, match="CENTERMASK_BACKEND=onnxruntime"):
        Settings(onnx_model=tiny_onnx)
