"""Serve ``model.onnx`` with onnxruntime as a Triton Python-backend model.

The ``tritonserver`` in the nvidia-pytriton wheel has no ONNX Runtime backend, so locally every
ONNX model is served by this file: the repository writer copies it as ``model.py`` into the
model's version directory, beside ``model.onnx``. Production (the NGC image) serves the same
``model.onnx`` with ``backend: "onnxruntime"`` instead; both read the same config parameters.

At load the ONNX graph's input and output names, element types and shapes are checked against
config.pbtxt, and any difference stops the load with a message naming each one, rather than
failing the first request. When the dynamic batcher hands over several requests, their inputs
are concatenated along the batch axis, run through onnxruntime once, and the outputs are split
back per request.

Config parameters (``parameters { key: ... value { string_value: ... } }``), the same keys the
onnxruntime backend uses in production:

- ``intra_op_thread_count``: onnxruntime intra-op threads (default 1).
- ``inter_op_thread_count``: onnxruntime inter-op threads (default 1).

This file runs inside the Python-backend stub and must stay self-contained: it imports nothing
from this project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

# Provided by the Python-backend stub at run time; there is no installable package to type it.
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

MODEL_FILENAME = "model.onnx"
DEFAULT_THREADS = 1

# ONNX element type (as onnxruntime reports it) -> Triton config data type.
_ONNX_TO_TRITON: dict[str, str] = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
}


class ModelConfigMismatchError(ValueError):
    """config.pbtxt and model.onnx disagree about the model's tensors."""


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as config.pbtxt declares it."""

    name: str
    data_type: str
    shape: tuple[int, ...]
    """Full shape the ONNX graph sees, batch axis (-1) included when the model batches."""


def _config_tensors(entries: list[dict[str, Any]], max_batch_size: int) -> list[TensorConfig]:
    tensors = []
    for entry in entries:
        reshape = entry.get("reshape")
        # Protobuf's JSON form writes int64 values as strings.
        dims = [int(d) for d in (reshape["shape"] if reshape else entry.get("dims", []))]
        shape = (-1, *dims) if max_batch_size > 0 else tuple(dims)
        tensors.append(TensorConfig(entry["name"], entry["data_type"], tuple(shape)))
    return tensors


def _shape_problem(
    kind: str, config: TensorConfig, onnx_shape: list[Any], batched: bool
) -> str | None:
    if len(onnx_shape) != len(config.shape):
        return (
            f"{kind} '{config.name}': config.pbtxt gives shape {list(config.shape)} "
            f"(batch axis included), model.onnx has {onnx_shape}"
        )
    for axis, (want, have) in enumerate(zip(config.shape, onnx_shape, strict=True)):
        # onnxruntime reports a dynamic axis as its symbolic name (str) or None.
        fixed = isinstance(have, int) and have >= 0
        if batched and axis == 0 and fixed:
            return (
                f"{kind} '{config.name}': the batch axis of model.onnx is fixed at {have}; "
                "a batching model (max_batch_size > 0) needs a dynamic first axis"
            )
        if want != -1 and fixed and want != have:
            return (
                f"{kind} '{config.name}': axis {axis} is {want} in config.pbtxt "
                f"but {have} in model.onnx"
            )
    return None


def validate_io(
    model_config: dict[str, Any], session: ort.InferenceSession
) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """Check that config.pbtxt describes the ONNX graph's inputs and outputs.

    Inputs must match one to one; every configured output must exist in the graph (the graph
    may have more). Names, element types and shapes are compared.

    Returns:
        The configured inputs and outputs.

    Raises:
        ModelConfigMismatchError: listing every difference found.
    """
    max_batch_size = int(model_config.get("max_batch_size", 0))
    inputs = _config_tensors(model_config.get("input", []), max_batch_size)
    outputs = _config_tensors(model_config.get("output", []), max_batch_size)
    problems: list[str] = []
    for kind, configured, graph, exact in (
        ("input", inputs, session.get_inputs(), True),
        ("output", outputs, session.get_outputs(), False),
    ):
        by_name = {node.name: node for node in graph}
        configured_names = {tensor.name for tensor in configured}
        for tensor in configured:
            node = by_name.get(tensor.name)
            if node is None:
                problems.append(
                    f"{kind} '{tensor.name}' is in config.pbtxt but model.onnx has "
                    f"{kind}s {sorted(by_name)}"
                )
                continue
            onnx_type = _ONNX_TO_TRITON.get(node.type)
            if onnx_type is None:
                problems.append(f"{kind} '{tensor.name}': unsupported ONNX type {node.type}")
            elif onnx_type != tensor.data_type:
                problems.append(
                    f"{kind} '{tensor.name}': config.pbtxt says {tensor.data_type}, "
                    f"model.onnx has {node.type} ({onnx_type})"
                )
            problem = _shape_problem(kind, tensor, list(node.shape), max_batch_size > 0)
            if problem:
                problems.append(problem)
        if exact:
            problems.extend(
                f"{kind} '{name}' of model.onnx is missing from config.pbtxt"
                for name in sorted(set(by_name) - configured_names)
            )
    if problems:
        raise ModelConfigMismatchError(
            f"model '{model_config.get('name', '?')}': config.pbtxt does not match "
            f"{MODEL_FILENAME}: " + "; ".join(problems)
        )
    return inputs, outputs


def _int_parameter(model_config: dict[str, Any], key: str, default: int) -> int:
    parameter = model_config.get("parameters", {}).get(key)
    if parameter is None:
        return default
    value = str(parameter.get("string_value", "")).strip()
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"parameter {key} must be an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"parameter {key} must be >= 0, got {number}")
    return number


class TritonPythonModel:
    """Triton's entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open ``model.onnx`` of this version and validate it against config.pbtxt."""
        self._config: dict[str, Any] = json.loads(args["model_config"])
        self._name = args.get("model_name", self._config.get("name", "?"))
        self._max_batch_size = int(self._config.get("max_batch_size", 0))
        path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"model '{self._name}': {path} does not exist")

        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(
            self._config, "intra_op_thread_count", DEFAULT_THREADS
        )
        options.inter_op_num_threads = _int_parameter(
            self._config, "inter_op_thread_count", DEFAULT_THREADS
        )
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads would otherwise spin on the CPU that Triton and the gateway share.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = validate_io(self._config, self._session)
        self._input_names = [tensor.name for tensor in inputs]
        self._output_names = [tensor.name for tensor in outputs]
        pb_utils.Logger.log_info(
            f"{self._name}: loaded {path} (onnxruntime {ort.__version__}, "
            f"intra_op_threads={options.intra_op_num_threads}, inputs={self._input_names}, "
            f"outputs={self._output_names}, max_batch_size={self._max_batch_size})"
        )

    def _run(self, feeds: dict[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        results = self._session.run(self._output_names, feeds)
        return [np.asarray(result) for result in results]

    def _response(self, arrays: list[npt.NDArray[Any]]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(array))
                for name, array in zip(self._output_names, arrays, strict=True)
            ]
        )

    def _inputs(self, request: Any) -> dict[str, npt.NDArray[Any]]:
        return {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self._input_names
        }

    def _execute_merged(self, requests: list[Any]) -> list[Any]:
        per_request = [self._inputs(request) for request in requests]
        first = self._input_names[0]
        sizes = [feeds[first].shape[0] for feeds in per_request]
        merged = {
            name: np.concatenate([feeds[name] for feeds in per_request], axis=0)
            for name in self._input_names
        }
        results = self._run(merged)
        bounds = np.cumsum(sizes)[:-1]
        split = [np.split(result, bounds, axis=0) for result in results]
        return [self._response([parts[index] for parts in split]) for index in range(len(requests))]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer ``requests`` (one response each, in order) with one onnxruntime run."""
        try:
            if self._max_batch_size > 0 and len(requests) > 1:
                return self._execute_merged(requests)
            return [self._response(self._run(self._inputs(request))) for request in requests]
        except Exception as exc:  # answer every request instead of crashing the stub
            error = pb_utils.TritonError(f"{self._name}: inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

    def finalize(self) -> None:
        """Release the onnxruntime session."""
        del self._session
