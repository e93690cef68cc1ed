"""Ranker micro-benchmark: PyTorch eager vs ONNX FP32 vs ONNX INT8, one thread.

For each ranker built by ``make models`` (build/rankers, build/onnx), times one call at batch
sizes 1, 32 and 500 (one request's candidates) on real test-period feature rows, and writes the
median and p99 per call to ``benchmarks/results/model_bench.json`` with the machine and library
versions. PyTorch runs the weights the graphs were exported from (subnormal ones set to zero,
`export.flush_subnormal_weights`), so the three time the same model. Run:
``.venv/bin/python -m benchmarks.model_bench [--build build] [--repeats 300]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from benchmarks.harness.report import machine_description
from triton_models import export
from triton_models.dataset import RankingSet
from triton_models.pipeline import PipelineOptions, load_ranker
from triton_models.rankers import RANKERS

BATCHES = (1, 32, 500)
RESULTS = Path(__file__).resolve().parent / "results" / "model_bench.json"


def _time(call: Callable[[], Any], repeats: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        call()
        samples[i] = time.perf_counter() - start
    return {
        "median_ms": float(np.median(samples) * 1e3),
        "p99_ms": float(np.quantile(samples, 0.99) * 1e3),
        "repeats": repeats,
    }


def _machine() -> dict[str, Any]:
    return {
        **machine_description(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "threads": 1,
        "note": "shared development machine; other processes may add noise",
    }


def run(build: Path, repeats: int) -> dict[str, Any]:
    """Times every ranker at every batch size; returns the report."""
    torch.set_num_threads(1)
    test = RankingSet.load(build / "datasets" / "test.npz")
    rows: npt.NDArray[np.float32] = np.ascontiguousarray(test.features[: max(BATCHES)])
    opts = PipelineOptions()
    results: dict[str, Any] = {}
    for name in RANKERS:
        model = load_ranker(build / "rankers", name, opts)
        export.flush_subnormal_weights(model)
        fp32 = export.session(build / "onnx" / name / "fp32.onnx", threads=1)
        int8 = export.session(build / "onnx" / name / "int8.onnx", threads=1)
        method = json.loads((build / "onnx" / name / "export.json").read_text())["int8_method"]
        per_batch: dict[str, Any] = {}
        for batch in BATCHES:
            x = rows[:batch]
            tensor = torch.from_numpy(x)

            def eager(tensor: torch.Tensor = tensor, model: torch.nn.Module = model) -> None:
                with torch.inference_mode():
                    model(tensor)

            def onnx_fp32(
                x: npt.NDArray[np.float32] = x, session: ort.InferenceSession = fp32
            ) -> None:
                session.run(["score"], {"features": x})

            def onnx_int8(
                x: npt.NDArray[np.float32] = x, session: ort.InferenceSession = int8
            ) -> None:
                session.run(["score"], {"features": x})

            per_batch[str(batch)] = {
                "pytorch_eager": _time(eager, repeats),
                "onnx_fp32": _time(onnx_fp32, repeats),
                f"onnx_int8_{method}": _time(onnx_int8, repeats),
            }
        results[name] = per_batch
    return {
        "benchmark": "ranker inference per call, one thread",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "batches": list(BATCHES),
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.build, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, per_batch in report["results"].items():
        for batch, timings in per_batch.items():
            summary = ", ".join(
                f"{k} {v['median_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in timings.items()
            )
            print(f"{name} batch {batch}: median/p99 ms: {summary}")


if __name__ == "__main__":
    main()
