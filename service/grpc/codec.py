"""gRPC messages ↔ the Open Inference Protocol's requests and answers (`service.v2.dataplane`).

The input `image` is a BYTES tensor of encoded images, one element per image, either in
`contents.bytes_contents` (an element per image) or, as tritonclient sends it, in `raw_input_contents`
(each element as a 4-byte little-endian length and its bytes: `service.v2.codec.bytes_elements`). Request
parameters are the same as over HTTP and validated by the same model; the outputs are the same tensors,
sent as Triton sends them, in `raw_output_contents` (`service.v2.codec.tensor_bytes`: numbers
little-endian, each mask its JSON object's text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import InvalidRequest
from service.grpc import grpc_predict_v2_pb2 as pb
from service.v2.codec import ParsedRequest, bytes_elements, image_count, requested_outputs, tensor_bytes
from service.v2.dataplane import InferAnswer
from service.v2.models import INPUT, OUTPUTS

# The protocol's datatypes → Triton's model configuration types (ModelConfig).
_CONFIG_TYPES = {"FP32": pb.TYPE_FP32, "INT64": pb.TYPE_INT64, "BYTES": pb.TYPE_STRING}


def parse_infer_request(request: pb.ModelInferRequest) -> ParsedRequest:
    """A ModelInferRequest → its images, parameters and wanted outputs; InvalidRequest when malformed."""
    if len(request.inputs) != 1:
        raise InvalidRequest(f"the request takes one input, {INPUT!r}: a BYTES tensor of encoded images")
    tensor = request.inputs[0]
    count = image_count(tensor.name, tensor.datatype, list(tensor.shape))
    inline = tensor.contents.bytes_contents
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidRequest(
                f"raw_input_contents holds {len(request.raw_input_contents)} entries for the 1 input"
            )
        if inline:
            raise InvalidRequest(f"{INPUT!r} is in both contents and raw_input_contents: send it once")
        images = bytes_elements(request.raw_input_contents[0], count)
    else:
        if len(inline) != count:
            raise InvalidRequest(
                f"contents.bytes_contents of {INPUT!r} holds {len(inline)} images, its shape says {count}"
            )
        images = list(inline)
    parameters = parameter_values(request.parameters)
    outputs = requested_outputs([{"name": output.name} for output in request.outputs] or None, False)
    return ParsedRequest(request.id or None, images, parameters, outputs, binary_output=False)


def parameter_values(
    parameters: Mapping[str, pb.InferParameter] | Mapping[str, pb.ModelRepositoryParameter],
) -> dict[str, Any]:
    """Request parameters (an infer request's, or a load's or unload's) by name, each value as the JSON
    encoding would carry it (None when unset)."""
    return {name: parameter_value(value) for name, value in parameters.items()}


def parameter_value(parameter: pb.InferParameter | pb.ModelRepositoryParameter) -> Any:
    """A parameter's value, as the JSON encoding would carry it (None when unset)."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def infer_response(answer: InferAnswer) -> pb.ModelInferResponse:
    """The answer's tensors as a ModelInferResponse, each output's elements in raw_output_contents."""
    response = pb.ModelInferResponse(
        model_name=answer.header["model_name"],
        model_version=answer.header["model_version"],
        id=answer.header.get("id", ""),
    )
    # The answer's parameters (`tiles` of a tiled request) are strings, as the JSON answer's.
    for name, value in answer.header.get("parameters", {}).items():
        response.parameters[name].string_param = value
    for name, tensor in answer.tensors.items():
        response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor_bytes(tensor))
    return response


def model_metadata_response(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """`service.v2.dataplane.model_metadata`'s dict as its message."""
    TensorMetadata = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[TensorMetadata(**tensor) for tensor in metadata["inputs"]],
        outputs=[TensorMetadata(**tensor) for tensor in metadata["outputs"]],
    )


def model_config(
    metadata: dict[str, Any], *, backend: str, max_batch_size: int, max_batch_delay_ms: float
) -> pb.ModelConfig:
    """Triton's model configuration of the served model, as far as it means something here: the name,
    platform and backend, the tensors, and the dynamic batching in force. `max_batch_size` 0: the tensors
    have no batch dimension of Triton's kind (the images are the input's first dimension, the outputs
    concatenate their instances)."""
    return pb.ModelConfig(
        name=metadata["name"],
        platform=metadata["platform"],
        backend=backend,
        max_batch_size=0,
        input=[
            pb.ModelInput(
                name=tensor["name"], data_type=_CONFIG_TYPES[tensor["datatype"]], dims=tensor["shape"]
            )
            for tensor in metadata["inputs"]
        ],
        output=[
            pb.ModelOutput(name=name, data_type=_CONFIG_TYPES[datatype], dims=shape)
            for name, (datatype, shape) in OUTPUTS.items()
        ],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=[max_batch_size],
            max_queue_delay_microseconds=round(max_batch_delay_ms * 1000),
        ),
    )
