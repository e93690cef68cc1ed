"""One ONNX graph with two heads: a ranker's score and the discovery model's, from one input.

A ranker ensemble that ran the discovery model as a second step cost Triton a second model
execution per request (a second Python-backend round trip locally, a second scheduler hop in
production), whether or not the caller wanted the discovery score. Both models read the same
``features`` matrix, so their graphs are joined side by side into one model: the ranker's
nodes unchanged, the discovery model's renamed under a prefix (so no name collides) and fed the
same input. One execution answers ``score`` and ``discovery_score``.

The graphs are joined as they are (the INT8 ones as quantized, the fp32 ones for GPUs), node
for node, so each head computes exactly what its model alone computes: the offline evaluation
of either model holds for the joined graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

DISCOVERY_PREFIX = "discovery_"
"""Prefix of every name of the discovery graph in the joined model; its ``score`` output
becomes ``discovery_score``."""


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    """Every domain the models import, at the highest version any of them imports it."""
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]


def join_heads(
    ranker: onnx.ModelProto, discovery: onnx.ModelProto, input_name: str, output_name: str
) -> onnx.ModelProto:
    """The model computing both graphs from ``ranker``'s input ``input_name``: outputs
    ``output_name`` (the ranker's) and ``DISCOVERY_PREFIX + output_name`` (the discovery
    model's).

    Raises:
        ValueError: the graphs do not both have exactly that one input and that one output.
    """
    for role, model in (("ranker", ranker), ("discovery", discovery)):
        inputs = [value.name for value in model.graph.input]
        outputs = [value.name for value in model.graph.output]
        if inputs != [input_name] or outputs != [output_name]:
            raise ValueError(
                f"the {role} graph has inputs {inputs} and outputs {outputs}; "
                f"both heads need exactly [{input_name!r}] and [{output_name!r}]"
            )
    prefixed = onnx.compose.add_prefix(discovery, DISCOVERY_PREFIX)
    shared_input = DISCOVERY_PREFIX + input_name
    nodes = []
    for node in prefixed.graph.node:
        node.input[:] = [input_name if name == shared_input else name for name in node.input]
        nodes.append(node)
    graph = helper.make_graph(
        [*ranker.graph.node, *nodes],
        ranker.graph.name,
        list(ranker.graph.input),
        [*ranker.graph.output, *prefixed.graph.output],
        [*ranker.graph.initializer, *prefixed.graph.initializer],
        value_info=[*ranker.graph.value_info, *prefixed.graph.value_info],
    )
    graph.sparse_initializer.extend([*ranker.graph.sparse_initializer])
    graph.sparse_initializer.extend([*prefixed.graph.sparse_initializer])
    joined = helper.make_model(
        graph,
        opset_imports=_opsets(ranker, discovery),
        producer_name="recsys two_heads",
    )
    joined.ir_version = max(ranker.ir_version, discovery.ir_version)
    for function in [*ranker.functions, *prefixed.functions]:
        joined.functions.append(function)
    onnx.checker.check_model(joined)
    return joined


def join_files(ranker: Path, discovery: Path, input_name: str, output_name: str) -> bytes:
    """:func:`join_heads` of two ``.onnx`` files, serialized."""
    joined = join_heads(onnx.load(ranker), onnx.load(discovery), input_name, output_name)
    return joined.SerializeToString()
