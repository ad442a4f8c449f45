"""The shipped gRPC modules are what `python -m service.grpc.generate` writes from the proto, and the proto
speaks Triton's wire format: every field we declare has the number and type tritonclient's has."""

from __future__ import annotations

import pytest

from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc.generate import PROTO


def test_the_shipped_modules_are_generated_from_the_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e .[test])")
    from service.grpc.generate import generated

    stale = [name for name, text in generated().items() if PROTO.with_name(name).read_text() != text]
    assert stale == [], "run python -m service.grpc.generate"


def test_the_messages_are_tritons_on_the_wire() -> None:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    from google.protobuf import descriptor_pool
    from tritonclient.grpc import model_config_pb2, service_pb2

    theirs = {
        **service_pb2.DESCRIPTOR.message_types_by_name,
        **model_config_pb2.DESCRIPTOR.message_types_by_name,
    }
    checked = 0
    pending = list(pb.DESCRIPTOR.message_types_by_name.values())
    while pending:
        ours = pending.pop()
        pending.extend(ours.nested_types)
        if ours.full_name.split(".")[1] not in theirs:
            continue
        their = descriptor_pool.Default().FindMessageTypeByName(ours.full_name)
        for field in ours.fields:
            match = their.fields_by_number.get(field.number)
            assert match is not None and (match.name, match.type) == (field.name, field.type), ours.full_name
            checked += 1
    assert checked > 60
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
