"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` and `grpc.health.v1`, served
beside the HTTP API in the same process (`CENTERMASK_GRPC_PORT`, 8001 by default; 0: none).

`grpc_predict_v2.proto` is the protocol (its origin in its header), `grpc_predict_v2_pb2*.py` its generated
modules (`generate.py` writes them), `codec.py` messages ↔ the protocol's requests and answers
(`service.v2.dataplane`, which HTTP's `/v2` uses too), `status.py` service errors → gRPC statuses,
`servicer.py` the RPCs, `server.py` the server's life.
"""
