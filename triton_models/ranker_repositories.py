"""Step 7 of the offline pipeline: the Triton model repositories of the rankers.

For each ranker ``<name>`` (``ranker_v2``, ``ranker_v3``) two models are written with
:mod:`triton_models.repository`, in both flavours (``build/triton/local`` for the wheel's
tritonserver, ``build/triton/production`` for the NGC image):

- ``<name>_onnx``: the quantized ONNX model, with dynamic batching and CPU instances; in the
  production flavour also ``configs/gpu.pbtxt``, GPU instances serving the fp32 graph through
  TensorRT (see :mod:`triton_models.repository`). With a discovery model it has two heads
  (:mod:`triton_models.two_heads`): the ranker's graph and the discovery model's side by side
  on the same ``features``, answering ``score`` and ``discovery_score`` in one execution;
- ``<name>``: an ensemble (``platform: "ensemble"``) of that model.

The discovery model (``discovery_vN``, :mod:`triton_models.discovery`) is also written as
``discovery_vN_onnx`` on its own (quantized, dynamic batching, two versions loaded): the
folder that names its features and offline figures, which the gateway checks at start, and
a model to score with directly. No ensemble runs it: when it was the ensembles' second step,
every Recommend cost Triton two executions (0.99 -> 1.41 ms of Triton CPU per Recommend,
``benchmarks/serving_cost.py``), since an ensemble runs all its steps whatever outputs the
caller asks for. Joined into each ranker's graph it costs one, and each ranker version
carries the discovery head it was built with, so a rollout moves both together.

The ensemble has one step because everything else is already inside the graph:
standardisation and the sigmoid were folded into it at export, so a preprocessing model would
only add a scheduling hop and a tensor copy per request. Clients (the gateway) call the stable
ensemble name; a future version can add steps (or swap the composing model) without any client
change. The hop was measured against calling ``<name>_onnx`` directly
(``benchmarks/triton_serving_bench.py``): Triton's CPU per request differed by -6% to +8%
depending on the load, within the noise between rounds, so the indirection stays. Tensors:
input ``features`` FP32 ``[-1, F]``, outputs ``score`` (and ``discovery_score``) FP32
``[-1, 1]``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triton_models import repository as repo
from triton_models.export import INPUT_NAME, OUTPUT_NAME
from triton_models.two_heads import DISCOVERY_PREFIX, join_files

DISCOVERY_OUTPUT = DISCOVERY_PREFIX + OUTPUT_NAME
"""The output carrying the discovery head's score of each row (``discovery_score``)."""


@dataclass(frozen=True)
class DiscoveryHead:
    """The discovery model a ranker's graph is joined with (:mod:`triton_models.two_heads`)."""

    name: str
    """Its served name, e.g. ``discovery_v1`` (the ranker's metadata names it)."""
    onnx_model: Path
    """Its CPU (INT8) graph."""
    gpu_onnx_model: Path | None = None
    """Its fp32 graph, joined with the ranker's GPU graph (production flavour)."""


@dataclass(frozen=True)
class ServingOptions:
    """Batching and instance settings written into every ranker's config.

    The defaults were chosen by measurement on a 2-core machine
    (``benchmarks/triton_serving_bench.py``, results in ``benchmarks/results/``): requests of
    500-600 rows at 450 and 1,000 requests/s (open loop, as the gateway sends them) and 32
    callers (closed loop). Triton's CPU per request falls with the requests merged per
    execution, since the Python backend's cost is mostly per execution; everything else
    (preferred sizes, one or two instances, the ensemble hop) moved it less than the noise
    between rounds.
    """

    max_batch_size: int = 4096
    """Largest batch Triton forms (rows, i.e. candidates, summed over requests)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes the dynamic batcher aims for; none: it merges whatever has queued. A request
    carries 500-600 candidates, a number that varies, so sums of requests hit a fixed size
    only by chance; the former 500/1000/2000 never matched even one request, and dropping them
    alone measured within the noise (0.94-1.12x the CPU per request)."""
    max_queue_delay_us: int = 2000
    """How long a request may wait for others to join its batch. At the gateway's rates a
    lone request rarely meets another within 100 us (1.3 requests per execution at 450
    requests/s); 2 ms merged 2.4 there and 3.5 at 1,000/s. Triton's CPU per request fell to
    0.87x at 450/s, 0.96x at 1,000/s and 0.91x at 32 callers (medians of per-round ratios to
    the former settings); at 32 callers throughput doubled and the p99 fell from 133 to 22 ms.
    The price is latency at low load: the median at 450/s rose from 1.4 to 4.1 ms, far inside
    the ranker's 40 ms budget (open-loop p99s followed the machine's background load more
    than any setting). 1 ms saved as much CPU and merged less under load."""
    instance_count: int = 2
    """Model instances per server (CPU). On 2 cores one instance measured the same CPU per
    request as two, within the noise (at 1 ms delay: 0.92-0.94x against 0.86-0.97x of the
    former settings), and its p99 was better under one load and worse under another; two keep
    a burst from queueing behind a single execution."""
    intra_op_threads: int = 1
    """onnxruntime threads per instance."""
    loaded_versions: int = 2
    """Versions Triton keeps loaded: the previous one keeps serving while gateways switch to a
    new one, and stays when a new one fails to load."""
    warmup_rows: int = 500
    """Zero rows each instance scores at load, before Triton reports the model READY: a cold
    instance's first call took 45-90 ms against 3 ms warm, past the gateway's 40 ms ranker
    timeout, so the first requests after a start or a new version were answered by the
    fallback."""


def git_sha(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout, or None outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def tensor_specs(num_features: int) -> tuple[repo.TensorSpec, repo.TensorSpec]:
    """The ``features`` input and ``score`` output of every ranker."""
    return (
        repo.TensorSpec(INPUT_NAME, np.float32, (num_features,)),
        repo.TensorSpec(OUTPUT_NAME, np.float32, (1,)),
    )


def write_ranker(
    root: Path,
    name: str,
    onnx_model: Path,
    num_features: int,
    metadata: Mapping[str, Any],
    options: ServingOptions,
    flavour: repo.Flavour,
    version: int = 1,
    gpu_onnx_model: Path | None = None,
    discovery: DiscoveryHead | None = None,
) -> tuple[Path, Path]:
    """Writes ``<name>_onnx`` and the ensemble ``<name>`` into ``root``; returns both folders.

    ``gpu_onnx_model`` (production flavour) is the graph GPU deployments serve. With
    ``discovery``, ``<name>_onnx`` is the ranker's graph joined with the discovery model's
    (its GPU graph with the discovery model's ``gpu_onnx_model``), and both it and the
    ensemble answer ``discovery_score`` beside ``score``.
    """
    features, score = tensor_specs(num_features)
    outputs: tuple[repo.TensorSpec, ...] = (score,)
    model: Path | bytes = onnx_model
    gpu_model: Path | bytes | None = gpu_onnx_model
    if discovery is not None:
        outputs = (score, repo.TensorSpec(DISCOVERY_OUTPUT, np.float32, (1,)))
        model = join_files(onnx_model, discovery.onnx_model, INPUT_NAME, OUTPUT_NAME)
        if gpu_onnx_model is not None:
            if discovery.gpu_onnx_model is None:
                raise ValueError(f"{name} has a GPU graph but {discovery.name} has none")
            gpu_model = join_files(
                gpu_onnx_model, discovery.gpu_onnx_model, INPUT_NAME, OUTPUT_NAME
            )
    model_name = f"{name}_onnx"
    model_dir = repo.write_onnx_model(
        root,
        onnx_spec(model_name, num_features, options, outputs),
        model,
        flavour=flavour,
        version=version,
        metadata=metadata,
        gpu_onnx_model=gpu_model,
    )
    step = repo.EnsembleStep(
        model_name=model_name,
        input_map={INPUT_NAME: INPUT_NAME},
        output_map={output.name: output.name for output in outputs},
    )
    ensemble_dir = repo.write_ensemble(
        root,
        repo.EnsembleSpec(
            name=name,
            inputs=(features,),
            outputs=outputs,
            steps=(step,),
            max_batch_size=options.max_batch_size,
            version_policy=repo.LatestVersions(options.loaded_versions),
        ),
        version=version,
    )
    repo.write_version_metadata(ensemble_dir, version, metadata)
    return model_dir, ensemble_dir


def write_discovery(
    root: Path,
    name: str,
    onnx_model: Path,
    num_features: int,
    metadata: Mapping[str, Any],
    options: ServingOptions,
    flavour: repo.Flavour,
    version: int = 1,
    gpu_onnx_model: Path | None = None,
) -> Path:
    """Writes the discovery model ``<name>_onnx`` on its own (no ensemble: the rankers'
    graphs carry it as their second head); returns its folder."""
    return repo.write_onnx_model(
        root,
        onnx_spec(f"{name}_onnx", num_features, options),
        onnx_model,
        flavour=flavour,
        version=version,
        metadata=metadata,
        gpu_onnx_model=gpu_onnx_model,
    )


def onnx_spec(
    model_name: str,
    num_features: int,
    options: ServingOptions,
    outputs: tuple[repo.TensorSpec, ...] | None = None,
) -> repo.OnnxModelSpec:
    """How Triton serves one of the ONNX models (a ranker's, two-headed or not, or the
    discovery model); ``outputs`` defaults to ``score`` alone."""
    features, score = tensor_specs(num_features)
    return repo.OnnxModelSpec(
        name=model_name,
        inputs=(features,),
        outputs=outputs if outputs is not None else (score,),
        max_batch_size=options.max_batch_size,
        dynamic_batching=repo.DynamicBatching(
            preferred_batch_size=options.preferred_batch_sizes,
            max_queue_delay_microseconds=options.max_queue_delay_us,
            # No default_queue_policy: with any (a queue timeout, or only max_queue_size) the
            # 2.51 batcher held some requests about 520 ms and lost 10-20% throughput (Triton
            # alone, 32 concurrent). The gateway bounds Triton's backlog instead.
        ),
        instance_count=options.instance_count,
        intra_op_threads=options.intra_op_threads,
        version_policy=repo.LatestVersions(options.loaded_versions),
        warmup_rows=options.warmup_rows,
    )
