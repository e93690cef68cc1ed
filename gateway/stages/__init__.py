"""The Recommend pipeline, one module per stage, in request order:

validate -> assign -> features -> candidates -> filter -> rank -> rerank -> blend (the
requested surface) -> respond.

Stages take and return the small dataclasses of `gateway.stages.types`; only `validate` (proto
in) and `respond` (proto out) see protobuf messages, and no stage sees the gRPC context.
"""
