"""Write Triton model repositories for ONNX models and ensembles of them.

One :class:`OnnxModelSpec` is the single source of truth for a model's tensors, batching and
instances; it is written in one of two flavours:

- ``local``: ``backend: "python"`` running :mod:`triton_models.python_backend.onnx_model`
  (copied as ``model.py`` into the version directory beside ``model.onnx``), because the
  ``tritonserver`` in the nvidia-pytriton wheel has no ONNX Runtime backend.
- ``production``: ``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"`` for the NGC
  Triton image, written for both devices at once: ``config.pbtxt`` runs ``KIND_CPU``
  instances, ``configs/gpu.pbtxt`` runs ``KIND_GPU`` instances through ONNX Runtime's TensorRT
  execution provider (CUDA for what TensorRT cannot run). Triton reads the second only when
  started with ``--model-config-name=gpu``, which the Helm chart passes exactly when
  ``triton.device`` is ``gpu`` (the setting that also requests the GPUs), so one repository
  image serves either deployment and the one setting chooses.

Configs are built as ``ModelConfig`` protobuf messages (tritonclient ships Triton's
``model_config.proto``) and printed with ``text_format``, so every written config.pbtxt is
well-formed by construction. Layout::

    <repository>/<model>/config.pbtxt
    <repository>/<model>/configs/gpu.pbtxt         (production flavour)
    <repository>/<model>/<version>/model.onnx
    <repository>/<model>/<version>/model_gpu.onnx  (production flavour, when given)
    <repository>/<model>/<version>/model.py        (local flavour)
    <repository>/<model>/<version>/metadata.json   (optional, per version)
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

CONFIG_FILENAME = "config.pbtxt"
CUSTOM_CONFIGS_DIR = "configs"
"""Folder of a model's named configurations, chosen by ``tritonserver --model-config-name``."""
GPU_CONFIG_NAME = "gpu"
"""``configs/gpu.pbtxt``: the configuration a GPU deployment starts Triton with."""
ONNX_FILENAME = "model.onnx"
GPU_ONNX_FILENAME = "model_gpu.onnx"
"""The graph the GPU configuration serves, when it differs from ``model.onnx``."""
PYTHON_MODEL_FILENAME = "model.py"
METADATA_FILENAME = "metadata.json"
INTRA_OP_THREADS_PARAMETER = "intra_op_thread_count"
"""Config parameter read by both onnx_model.py and Triton's onnxruntime backend."""

_NUMPY_TO_TRITON: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.object_): "TYPE_STRING",
}


class Device(StrEnum):
    """Where a production Triton runs its ONNX instances."""

    CPU = "cpu"
    """``KIND_CPU`` instances (``config.pbtxt``)."""
    GPU = "gpu"
    """``KIND_GPU`` instances with the TensorRT and CUDA execution providers
    (``configs/gpu.pbtxt``)."""


class Flavour(StrEnum):
    """Which Triton serves the repository."""

    LOCAL = "local"
    """The nvidia-pytriton wheel's tritonserver: Python backend running onnxruntime."""
    PRODUCTION = "production"
    """The NGC Triton image: the native onnxruntime backend."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor, without the batch axis."""

    name: str
    """Tensor name, identical in the ONNX graph and config.pbtxt."""
    dtype: npt.DTypeLike
    """NumPy element type (``np.float32``, ``"int64"``, ...)."""
    dims: tuple[int, ...]
    """Shape without the batch axis; -1 for a variable-size axis."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if any(d < -1 or d == 0 for d in self.dims):
            raise ValueError(f"tensor {self.name}: dims must be positive or -1, got {self.dims}")
        self.triton_type  # noqa: B018  (fails early on an unsupported dtype)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The element type as a ``numpy.dtype``."""
        return np.dtype(self.dtype)

    @property
    def triton_type(self) -> str:
        """The element type as config.pbtxt writes it (``TYPE_FP32``)."""
        try:
            return _NUMPY_TO_TRITON[self.numpy_dtype]
        except KeyError:
            raise ValueError(f"tensor {self.name}: no Triton type for {self.dtype!r}") from None

    @property
    def wire_type(self) -> str:
        """The element type as the inference protocol names it (``FP32``; ``BYTES``)."""
        short = self.triton_type.removeprefix("TYPE_")
        return "BYTES" if short == "STRING" else short


@dataclass(frozen=True)
class DynamicBatching:
    """Server-side dynamic batching (``dynamic_batching { ... }``)."""

    preferred_batch_size: tuple[int, ...] = ()
    """Batch sizes the batcher tries to form; empty lets it form the largest possible."""
    max_queue_delay_microseconds: int = 0
    """How long a request may wait for others to join its batch."""


@dataclass(frozen=True)
class GpuServing:
    """How a GPU deployment runs an ONNX model (``configs/gpu.pbtxt``).

    Not measured on a GPU here (no GPU machine was available): these are the onnxruntime
    backend's documented settings, chosen for a small batched MLP.
    """

    instance_count: int = 1
    """Instances per visible GPU; the dynamic batcher keeps one busy."""
    precision_mode: str = "FP16"
    """TensorRT precision: FP16 halves memory traffic; the GPU graph is the fp32 export, since
    the CPU's INT8 graphs are not TensorRT-friendly (dynamic quantization's MatMulInteger and
    DynamicQuantizeLinear would leave TensorRT for CUDA or the CPU)."""
    max_workspace_size_bytes: int = 1 << 30
    """TensorRT's scratch memory per engine build."""
    engine_cache_path: str = "/tmp/tensorrt-engines"
    """Where built engines are kept, so a restarted container skips the build. Under /tmp, the
    chart's writable emptyDir (the model repository is read-only)."""

    def __post_init__(self) -> None:
        if self.instance_count < 1:
            raise ValueError("GPU instance_count must be >= 1")
        if self.precision_mode not in ("FP32", "FP16", "INT8"):
            raise ValueError(f"precision_mode must be FP32, FP16 or INT8: {self.precision_mode}")


@dataclass(frozen=True)
class LatestVersions:
    """Serve the newest ``num_versions`` versions (Triton's default, with 1)."""

    num_versions: int = 1


@dataclass(frozen=True)
class AllVersions:
    """Serve every version in the repository."""


@dataclass(frozen=True)
class SpecificVersions:
    """Serve exactly these versions."""

    versions: tuple[int, ...]


VersionPolicy = LatestVersions | AllVersions | SpecificVersions


@dataclass(frozen=True)
class OnnxModelSpec:
    """An ONNX model as Triton should serve it; written in either flavour."""

    name: str
    """Model name: the repository folder and the name clients call."""
    inputs: tuple[TensorSpec, ...]
    """Graph inputs, in any order."""
    outputs: tuple[TensorSpec, ...]
    """Graph outputs that Triton returns."""
    max_batch_size: int = 0
    """Largest batch Triton forms; 0 means the model does not batch (no batch axis)."""
    dynamic_batching: DynamicBatching | None = None
    """Dynamic batcher settings; None disables it."""
    instance_count: int = 1
    """Model instances (CPU) running side by side."""
    intra_op_threads: int = 1
    """onnxruntime intra-op threads per instance."""
    version_policy: VersionPolicy = field(default_factory=LatestVersions)
    """Which versions Triton serves."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Further ``parameters`` entries (string values)."""
    warmup_rows: int = 0
    """Rows of zeros each instance scores while the model loads (``model_warmup``), so that
    Triton reports it READY only once the first call is no longer a cold one; 0: no warmup."""
    gpu: GpuServing = field(default_factory=GpuServing)
    """How the production flavour's GPU configuration runs the model."""

    def __post_init__(self) -> None:
        if self.warmup_rows < 0:
            raise ValueError("warmup_rows must be >= 0")
        if self.max_batch_size < 0:
            raise ValueError("max_batch_size must be >= 0")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ValueError(f"model {self.name}: dynamic batching needs max_batch_size > 0")
        if self.instance_count < 1 or self.intra_op_threads < 1:
            raise ValueError("instance_count and intra_op_threads must be >= 1")


@dataclass(frozen=True)
class EnsembleStep:
    """One model call inside an ensemble."""

    model_name: str
    """The composing model."""
    input_map: Mapping[str, str]
    """The model's input name -> the ensemble tensor fed to it."""
    output_map: Mapping[str, str]
    """The model's output name -> the ensemble tensor it produces."""
    model_version: int = -1
    """Version to call; -1 for the one the version policy picks."""


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble (``platform: "ensemble"``): a pipeline of steps over named tensors."""

    name: str
    """Ensemble name, called by clients."""
    inputs: tuple[TensorSpec, ...]
    """Tensors clients send."""
    outputs: tuple[TensorSpec, ...]
    """Tensors clients receive; each must be produced by some step."""
    steps: tuple[EnsembleStep, ...]
    """Model calls; Triton orders them by data dependencies."""
    max_batch_size: int = 0
    """Must not exceed any composing model's max_batch_size."""
    version_policy: VersionPolicy = field(default_factory=LatestVersions)
    """Which versions Triton serves."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Further ``parameters`` entries (string values)."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"ensemble {self.name} has no steps")
        available = {tensor.name for tensor in self.inputs}
        produced = {name for step in self.steps for name in step.output_map.values()}
        consumed = {name for step in self.steps for name in step.input_map.values()}
        unknown = consumed - available - produced
        if unknown:
            raise ValueError(
                f"ensemble {self.name}: steps read tensors that nothing provides: {sorted(unknown)}"
            )
        missing = {tensor.name for tensor in self.outputs} - produced
        if missing:
            raise ValueError(
                f"ensemble {self.name}: outputs that no step produces: {sorted(missing)}"
            )


def _tensor_messages(tensors: Sequence[TensorSpec], message_type: Any) -> list[Any]:
    return [
        message_type(
            name=tensor.name,
            data_type=model_config_pb2.DataType.Value(tensor.triton_type),
            dims=list(tensor.dims),
        )
        for tensor in tensors
    ]


def _set_parameters(config: Any, parameters: Mapping[str, str]) -> None:
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = str(value)


def _set_version_policy(config: Any, policy: VersionPolicy) -> None:
    if isinstance(policy, LatestVersions):
        config.version_policy.latest.num_versions = policy.num_versions
    elif isinstance(policy, AllVersions):
        config.version_policy.all.SetInParent()
    else:
        config.version_policy.specific.versions.extend(policy.versions)


def onnx_model_config(
    spec: OnnxModelSpec,
    flavour: Flavour,
    device: Device = Device.CPU,
    *,
    model_filename: str | None = None,
) -> Any:
    """The ``ModelConfig`` message for ``spec`` in ``flavour`` on ``device``.

    Args:
        model_filename: the version folder's graph file when it is not ``model.onnx``
            (``default_model_filename``).

    Raises:
        ValueError: a GPU configuration for the local flavour (the wheel's tritonserver runs
            the Python backend on CPU).
    """
    device = Device(device)
    if device is Device.GPU and flavour is Flavour.LOCAL:
        raise ValueError("GPU configurations are written for the production flavour only")
    config = model_config_pb2.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if flavour is Flavour.LOCAL:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
    _set_version_policy(config, spec.version_policy)
    config.input.extend(_tensor_messages(spec.inputs, model_config_pb2.ModelInput))
    config.output.extend(_tensor_messages(spec.outputs, model_config_pb2.ModelOutput))
    if spec.dynamic_batching is not None:
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(spec.dynamic_batching.preferred_batch_size)
        batching.max_queue_delay_microseconds = spec.dynamic_batching.max_queue_delay_microseconds
    if model_filename is not None:
        config.default_model_filename = model_filename
    if device is Device.GPU:
        # No `gpus` list: one group of instances on every GPU the container is given.
        config.instance_group.append(
            model_config_pb2.ModelInstanceGroup(
                count=spec.gpu.instance_count, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU
            )
        )
        _set_gpu_accelerators(config, spec)
    else:
        config.instance_group.append(
            model_config_pb2.ModelInstanceGroup(
                count=spec.instance_count, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU
            )
        )
    _set_parameters(
        config, {**spec.parameters, INTRA_OP_THREADS_PARAMETER: str(spec.intra_op_threads)}
    )
    if spec.warmup_rows:
        config.model_warmup.append(_warmup(spec))
    return config


def _tensorrt_shape(spec: OnnxModelSpec, rows: int) -> str:
    """A TensorRT optimisation-profile shape of every input (``features:600x46``)."""
    shapes = []
    for tensor in spec.inputs:
        dims = [rows] if spec.max_batch_size > 0 else []
        dims += [d if d >= 0 else 1 for d in tensor.dims]
        shapes.append(f"{tensor.name}:{'x'.join(str(d) for d in dims)}")
    return ",".join(shapes)


def _set_gpu_accelerators(config: Any, spec: OnnxModelSpec) -> None:
    """TensorRT first, CUDA for the nodes TensorRT cannot run (the onnxruntime backend's
    ``gpu_execution_accelerator`` list)."""
    tensorrt: dict[str, str] = {
        "precision_mode": spec.gpu.precision_mode,
        "max_workspace_size_bytes": str(spec.gpu.max_workspace_size_bytes),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{spec.gpu.engine_cache_path}/{spec.name}",
    }
    if spec.max_batch_size > 0:
        # One engine for every batch the dynamic batcher can form; without a profile TensorRT
        # builds a new engine (seconds) whenever a larger batch than any before arrives.
        opt_rows = min(spec.warmup_rows or spec.max_batch_size, spec.max_batch_size)
        tensorrt["trt_profile_min_shapes"] = _tensorrt_shape(spec, 1)
        tensorrt["trt_profile_opt_shapes"] = _tensorrt_shape(spec, opt_rows)
        tensorrt["trt_profile_max_shapes"] = _tensorrt_shape(spec, spec.max_batch_size)
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    accelerators.add(name="tensorrt", parameters=tensorrt)
    # One CUDA stream for TensorRT and the CUDA fallback, so no cross-stream syncs between them.
    accelerators.add(name="cuda", parameters={"use_ep_level_unified_stream": "1"})


def _warmup(spec: OnnxModelSpec) -> Any:
    """One warmup sample of `spec.warmup_rows` zero rows. A variable dimension becomes the
    row count when it is the (unbatched) first one, else 1."""
    batched = spec.max_batch_size > 0
    sample = model_config_pb2.ModelWarmup(
        name=f"zeros_{spec.warmup_rows}_rows",
        batch_size=min(spec.warmup_rows, spec.max_batch_size) if batched else 1,
    )
    for tensor in spec.inputs:
        dims = [
            d if d >= 0 else (spec.warmup_rows if i == 0 and not batched else 1)
            for i, d in enumerate(tensor.dims)
        ]
        sample.inputs[tensor.name].CopyFrom(
            model_config_pb2.ModelWarmup.Input(
                data_type=model_config_pb2.DataType.Value(tensor.triton_type),
                dims=dims,
                zero_data=True,
            )
        )
    return sample


def ensemble_config(spec: EnsembleSpec) -> Any:
    """The ``ModelConfig`` message of an ensemble."""
    config = model_config_pb2.ModelConfig(
        name=spec.name, platform="ensemble", max_batch_size=spec.max_batch_size
    )
    _set_version_policy(config, spec.version_policy)
    config.input.extend(_tensor_messages(spec.inputs, model_config_pb2.ModelInput))
    config.output.extend(_tensor_messages(spec.outputs, model_config_pb2.ModelOutput))
    for step in spec.steps:
        message = config.ensemble_scheduling.step.add()
        message.model_name = step.model_name
        message.model_version = step.model_version
        message.input_map.update(step.input_map)
        message.output_map.update(step.output_map)
    _set_parameters(config, spec.parameters)
    return config


def config_text(config: Any) -> str:
    """config.pbtxt text of a ``ModelConfig`` message."""
    return str(text_format.MessageToString(config))


def parse_config(text: str) -> Any:
    """Parse config.pbtxt text into a ``ModelConfig`` message (raises on malformed text)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def read_config(model_dir: Path) -> Any:
    """Parse ``model_dir/config.pbtxt``."""
    return parse_config((model_dir / CONFIG_FILENAME).read_text(encoding="utf-8"))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that a polling Triton never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; Triton may run as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _replace_directory(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def python_model_source() -> bytes:
    """The source of the Python-backend model that serves ONNX locally."""
    return (
        importlib.resources.files("triton_models.python_backend")
        .joinpath("onnx_model.py")
        .read_bytes()
    )


def write_version_metadata(model_dir: Path, version: int, metadata: Mapping[str, Any]) -> Path:
    """Write ``metadata.json`` (sorted keys, JSON-serialisable values) into a version folder.

    Returns:
        The file written.
    """
    path = model_dir / str(version) / METADATA_FILENAME
    text = json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
    _write_atomic(path, text.encode("utf-8"))
    return path


def read_version_metadata(model_dir: Path, version: int) -> dict[str, Any]:
    """The ``metadata.json`` of a version folder.

    Raises:
        FileNotFoundError: the version has no metadata.
    """
    path = model_dir / str(version) / METADATA_FILENAME
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def write_onnx_model(
    repository: Path,
    spec: OnnxModelSpec,
    onnx_model: Path | bytes,
    *,
    flavour: Flavour,
    version: int = 1,
    metadata: Mapping[str, Any] | None = None,
    gpu_onnx_model: Path | bytes | None = None,
) -> Path:
    """Write one version of an ONNX model, and its config.pbtxt, into ``repository``.

    The version folder is assembled aside and renamed into place (replacing an existing one),
    so a polling server sees either the old version or the complete new one.

    Args:
        repository: the model repository root.
        spec: tensors, batching and instances.
        onnx_model: the ``.onnx`` file, or its serialized bytes.
        flavour: ``local`` (Python backend) or ``production`` (onnxruntime backend).
        version: the version folder number (>= 1).
        metadata: written as ``metadata.json`` beside the model when given.
        gpu_onnx_model: the graph ``configs/gpu.pbtxt`` serves (production flavour), written
            as ``model_gpu.onnx``; None serves ``model.onnx`` on the GPU too.

    Returns:
        The model's folder, ``repository/spec.name``.
    """
    if version < 1:
        raise ValueError("version must be >= 1")
    flavour = Flavour(flavour)
    if gpu_onnx_model is not None and flavour is Flavour.LOCAL:
        raise ValueError("a GPU graph belongs to the production flavour only")
    model_dir = repository / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    data = onnx_model.read_bytes() if isinstance(onnx_model, Path) else onnx_model
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        (staging / ONNX_FILENAME).write_bytes(data)
        if flavour is Flavour.LOCAL:
            (staging / PYTHON_MODEL_FILENAME).write_bytes(python_model_source())
        if gpu_onnx_model is not None:
            gpu_data = (
                gpu_onnx_model.read_bytes() if isinstance(gpu_onnx_model, Path) else gpu_onnx_model
            )
            (staging / GPU_ONNX_FILENAME).write_bytes(gpu_data)
        if metadata is not None:
            text = json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
            (staging / METADATA_FILENAME).write_text(text, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        _replace_directory(staging, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_atomic(
        model_dir / CONFIG_FILENAME, config_text(onnx_model_config(spec, flavour)).encode()
    )
    if flavour is Flavour.PRODUCTION:
        gpu_config = onnx_model_config(
            spec,
            flavour,
            Device.GPU,
            model_filename=GPU_ONNX_FILENAME if gpu_onnx_model is not None else None,
        )
        _write_atomic(
            custom_config_path(model_dir, GPU_CONFIG_NAME), config_text(gpu_config).encode()
        )
    return model_dir


def custom_config_path(model_dir: Path, name: str) -> Path:
    """``<model>/configs/<name>.pbtxt``: what ``tritonserver --model-config-name=<name>`` loads
    instead of config.pbtxt, when it exists."""
    return model_dir / CUSTOM_CONFIGS_DIR / f"{name}.pbtxt"


def served_config(model_dir: Path, config_name: str | None) -> Any:
    """The configuration Triton loads for ``model_dir`` when started with
    ``--model-config-name=config_name`` (None: without it): the named one if present, else
    config.pbtxt, as Triton falls back."""
    if config_name:
        custom = custom_config_path(model_dir, config_name)
        if custom.is_file():
            return parse_config(custom.read_text(encoding="utf-8"))
    return read_config(model_dir)


def write_ensemble(repository: Path, spec: EnsembleSpec, *, version: int = 1) -> Path:
    """Write an ensemble's config.pbtxt and its (empty) version folder.

    Returns:
        The ensemble's folder, ``repository/spec.name``.
    """
    model_dir = repository / spec.name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    _write_atomic(model_dir / CONFIG_FILENAME, config_text(ensemble_config(spec)).encode())
    return model_dir


def _dims(value_info: Any) -> list[int]:
    return [
        int(dim.dim_value) if dim.HasField("dim_value") else -1
        for dim in value_info.type.tensor_type.shape.dim
    ]


def tensor_specs_from_onnx(
    model: Path | onnx.ModelProto, *, batched: bool = True
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Read the inputs and outputs of an ONNX graph as :class:`TensorSpec` s.

    Args:
        model: the ``.onnx`` file or a loaded model.
        batched: drop the first (batch) axis, for a model with ``max_batch_size > 0``.

    Returns:
        ``(inputs, outputs)``; initializers are not counted as inputs.
    """
    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    initializers = {init.name for init in proto.graph.initializer}

    def specs(values: Sequence[Any]) -> tuple[TensorSpec, ...]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            elem_type = value.type.tensor_type.elem_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
            dims = _dims(value)
            result.append(TensorSpec(value.name, dtype, tuple(dims[1:] if batched else dims)))
        return tuple(result)

    return specs(proto.graph.input), specs(proto.graph.output)
