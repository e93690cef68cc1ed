"""Step 5 of the offline pipeline: ONNX export and INT8 quantization of the rankers.

The exported graph is the serving contract with the gateway: one input ``features`` (FP32,
``[batch, F]``, dynamic batch axis) and one output ``score`` (FP32, ``[batch, 1]``, a
probability). Standardisation and the sigmoid are inside the graph.

Two INT8 variants are made with ``onnxruntime.quantization`` and compared by NDCG@10 on the
validation queries: dynamic (int8 weights, activations quantized per batch at run time) and
static (QDQ, activation ranges calibrated on validation features). Both keep the output layer
and the sigmoid in FP32 (:func:`head_nodes`), so scores are not cut to 256 levels. The better
one is kept; the check that INT8 stays within ``MAX_RELATIVE_NDCG_DROP`` of FP32 is
:func:`quantization_ok`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

_log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "score"
OPSET = 18
MAX_ABS_DIFF = 1e-4
"""Largest allowed |PyTorch - ONNX FP32| score difference."""
MAX_RELATIVE_NDCG_DROP = 0.01
"""INT8 NDCG@10 may be at most 1% (relative) below FP32."""


def flush_subnormal_weights(model: Any) -> int:
    """Sets the module's FP32 parameters that are subnormal (nonzero, below float32's smallest
    normal, about 1.2e-38) to zero, in place; returns how many there were.

    Weight decay leaves some weights there (585 of ranker_v2's 14,429, 1,710 of ranker_v3's).
    They change no score (a product with one is below every sum's last bit), but CPUs compute
    with subnormal operands many times slower: 550 rows took ranker_v2's FP32 graph 3.0 ms
    and ranker_v3's 12.8 ms with them, against 0.16 ms for discovery_v1, which had none.
    """
    import torch

    tiny = torch.finfo(torch.float32).tiny
    flushed = 0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dtype != torch.float32:
                continue
            subnormal = (parameter != 0) & (parameter.abs() < tiny)
            flushed += int(subnormal.sum())
            parameter[subnormal] = 0.0
    return flushed


def export_onnx(model: Any, num_features: int, path: Path) -> Path:
    """Exports a ranker (``forward(features) -> score``) to ``path`` with a dynamic batch axis,
    after :func:`flush_subnormal_weights` (so the module compared with the graph is the one
    exported)."""
    import torch

    model.eval()
    flushed = flush_subnormal_weights(model)
    if flushed:
        _log.info("%s: %d subnormal weights set to zero before export", path, flushed)
    example = torch.zeros(4, num_features, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:  # only for the legacy exporter
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def session(model: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` intra-op threads (no spinning)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_scores(
    sess: ort.InferenceSession, features: npt.NDArray[np.float32], batch: int = 65_536
) -> npt.NDArray[np.float32]:
    """``score[:, 0]`` of the model on ``features``."""
    parts = [
        np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: features[start : start + batch]})[0])
        for start in range(0, len(features), batch)
    ]
    scores: npt.NDArray[np.float32] = np.concatenate(parts or [np.empty((0, 1), np.float32)])
    return scores[:, 0].astype(np.float32)


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration batches to ``quantize_static``."""

    def __init__(self, features: npt.NDArray[np.float32], batch: int) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            {INPUT_NAME: features[start : start + batch]}
            for start in range(0, len(features), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


def head_nodes(fp32: Path) -> list[str]:
    """Names of the output layer (the Gemm/MatMul feeding the final Sigmoid) and of that
    Sigmoid, kept in FP32.

    The head reads the widest-ranged activations (in DCN-v2, the cross stack's output); with
    it quantized, ranker_v3 lost 2.7% validation NDCG@10, with it in FP32 0.6%. It is one
    ``[width, 1]`` layer, so keeping it costs nothing measurable. The dynamic quantizer splits
    Gemm into ``<name>_MatMul`` + Add, so both spellings are listed. With the Sigmoid left to
    the static quantizer, it wrapped the logit and the score in QuantizeLinear /
    DequantizeLinear pairs: 256 levels each, so ranker_v2 gave 110 distinct scores over 79,301
    validation rows and a customer's top items tied (callers saw equal scores, and the order
    among them came from the candidates' order). Kept in FP32: 75,778 distinct scores, the
    same validation NDCG@10.
    """
    graph = onnx.load(str(fp32)).graph
    producers = {output: node for node in graph.node for output in node.output}
    names: list[str] = []
    for node in graph.node:
        if node.op_type != "Sigmoid":
            continue
        head = producers.get(node.input[0])
        if head is not None and head.op_type in ("Gemm", "MatMul"):
            names += [head.name, f"{head.name}_MatMul", node.name]
    return names


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """Dynamic INT8: weights quantized offline, activations per batch at run time."""
    quantize_dynamic(
        str(fp32), str(out), weight_type=QuantType.QInt8, nodes_to_exclude=head_nodes(fp32)
    )
    return out


def quantize_static_int8(
    fp32: Path, out: Path, calibration: npt.NDArray[np.float32], batch: int = 1024
) -> Path:
    """Static INT8 (QDQ, per-channel weights), activation ranges from ``calibration`` rows."""
    quantize_static(
        str(fp32),
        str(out),
        _Calibration(calibration, batch),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=head_nodes(fp32),
    )
    return out


def max_abs_diff(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """``max |a - b|`` (0 for empty arrays)."""
    return float(np.max(np.abs(a - b))) if len(a) else 0.0


def quantization_ok(fp32_ndcg: float, int8_ndcg: float) -> bool:
    """True when INT8's NDCG@10 is within ``MAX_RELATIVE_NDCG_DROP`` (relative) of FP32's."""
    if fp32_ndcg <= 0:
        return int8_ndcg >= fp32_ndcg
    return (fp32_ndcg - int8_ndcg) / fp32_ndcg <= MAX_RELATIVE_NDCG_DROP
