"""`make models`: runs the offline pipeline from the raw data into the build folder.

Steps, in order: ingest -> retrieval -> datasets -> rankers -> export (ONNX + INT8) ->
evaluation -> triton (see :mod:`triton_models.pipeline` for what each writes). Each step
records a content hash of its inputs (data files, the code that transforms them and the
options) next to its outputs, so an unchanged input is not rebuilt; a rebuilt step changes its
outputs and so the hashes of the steps after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from feature_service import categories
from triton_models import ingest

_log = logging.getLogger("triton_models")
STAMP = ".inputs.sha256"


def content_hash(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and bytes of `paths`, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_current(out_dir: Path, inputs_hash: str) -> bool:
    """True when `out_dir` was built from inputs with this hash."""
    stamp = out_dir / STAMP
    return stamp.is_file() and stamp.read_text().strip() == inputs_hash


def run_ingest(data_dir: Path, out_dir: Path, force: bool = False) -> Path:
    """Builds the canonical tables into `out_dir` unless they are current; returns `out_dir`."""
    inputs_hash = content_hash(
        [data_dir / ingest.RAW_FILE, Path(ingest.__file__), Path(categories.__file__)]
    )
    if not force and is_current(out_dir, inputs_hash):
        _log.info("ingest: %s is up to date", out_dir)
        return out_dir
    _log.info("ingest: reading %s", data_dir / ingest.RAW_FILE)
    tables = ingest.build_tables(ingest.read_raw(data_dir))
    ingest.write_tables(tables, out_dir)
    (out_dir / STAMP).write_text(inputs_hash + "\n")
    _log.info("ingest: wrote %s (%s)", out_dir, json.dumps(tables.cleaning))
    return out_dir


def _code(*modules: str) -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here.parent / module for module in modules]


def _files(*folders: Path) -> list[Path]:
    """Every file under ``folders`` except stamps, in a fixed order."""
    return sorted(
        (p for folder in folders for p in folder.rglob("*") if p.is_file() and p.name != STAMP),
        key=lambda p: str(p),
    )


def run_step(
    name: str,
    out_dir: Path,
    inputs: list[Path],
    params: str,
    build: Callable[[], Any],
    *,
    force: bool = False,
) -> bool:
    """Runs ``build`` unless ``out_dir`` was built from the same inputs; returns True if run."""
    digest = hashlib.sha256(content_hash(inputs).encode())
    digest.update(params.encode())
    inputs_hash = digest.hexdigest()
    if not force and is_current(out_dir, inputs_hash):
        _log.info("%s: %s is up to date", name, out_dir)
        return False
    started = time.perf_counter()
    _log.info("%s: building %s", name, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP).unlink(missing_ok=True)
    build()
    (out_dir / STAMP).write_text(inputs_hash + "\n")
    _log.info("%s: done in %.1f s", name, time.perf_counter() - started)
    return True


def run_pipeline(
    data_dir: Path, out: Path, options: Any = None, *, force: bool = False
) -> dict[str, float]:
    """Runs every step into ``out``; returns each step's wall time in seconds (0 if skipped)."""
    from triton_models import pipeline

    opts = options or pipeline.PipelineOptions()
    # Serving options only shape the Triton repository: changing them rebuilds only that step.
    params = {"triton": opts.as_json()}
    training_params = opts.as_json(without=("serving",))
    tables, raw = out / "data", data_dir / ingest.RAW_FILE
    folders = {name: out / name for name in ("retrieval", "datasets", "rankers", "onnx", "reports")}
    triton_dir = out / "triton"
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], bool]) -> None:
        started = time.perf_counter()
        ran = step()
        timings[name] = time.perf_counter() - started if ran else 0.0

    started = time.perf_counter()
    run_ingest(data_dir, tables, force=force)
    timings["ingest"] = time.perf_counter() - started
    table_files = [tables / n for n in ("events.parquet", "items.parquet", "ingest_report.json")]
    shared = ["triton_models/retrieval.py", "triton_models/dataset.py", "triton_models/pipeline.py"]
    features = ("feature_service/definitions.py", "feature_service/kernels.py")
    steps: list[tuple[str, Path, Callable[[], list[Path]], Callable[[], Any]]] = [
        (
            "retrieval",
            folders["retrieval"],
            lambda: [*table_files, raw, *_code(*shared)],
            lambda: pipeline.run_retrieval(tables, data_dir, folders["retrieval"], opts),
        ),
        (
            "datasets",
            folders["datasets"],
            lambda: [*table_files, raw, *_code(*shared, *features, "triton_models/ingest.py")],
            lambda: pipeline.run_datasets(tables, data_dir, folders["datasets"], opts),
        ),
        (
            "rankers",
            folders["rankers"],
            lambda: [
                *_files(folders["datasets"]),
                *_code("triton_models/rankers.py", "triton_models/discovery.py"),
            ],
            lambda: pipeline.run_rankers(folders["datasets"], folders["rankers"], opts),
        ),
        (
            "export",
            folders["onnx"],
            lambda: [*_files(folders["rankers"]), *_code("triton_models/export.py")],
            lambda: pipeline.run_export(
                folders["datasets"], folders["rankers"], folders["onnx"], opts
            ),
        ),
        (
            "evaluation",
            folders["reports"],
            lambda: [
                *table_files,
                *_files(folders["onnx"], folders["retrieval"]),
                *_code(
                    "triton_models/evaluate.py",
                    "triton_models/ranking_quality.py",
                    "triton_models/discovery.py",
                    "feature_service/surfaces.py",
                ),
            ],
            lambda: pipeline.run_evaluation(
                tables,
                data_dir,
                folders["datasets"],
                folders["onnx"],
                folders["retrieval"],
                folders["reports"],
                opts,
            ),
        ),
        (
            "triton",
            triton_dir,
            lambda: [
                *_files(folders["onnx"], folders["reports"]),
                *_code(
                    "triton_models/ranker_repositories.py",
                    "triton_models/two_heads.py",
                    "triton_models/repository.py",
                    "triton_models/python_backend/onnx_model.py",
                ),
            ],
            lambda: pipeline.run_triton(
                folders["onnx"], folders["reports"], folders["datasets"], triton_dir, opts
            ),
        ),
    ]
    for name, folder, inputs, build in steps:
        timed(
            name,
            lambda name=name, folder=folder, inputs=inputs, build=build: run_step(  # type: ignore[misc]
                name, folder, inputs(), params.get(name, training_params), build, force=force
            ),
        )
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-models", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data/uci_online_retail"),
        help="folder with online_retail.csv.gz",
    )
    parser.add_argument("--out", type=Path, default=Path("build"), help="build folder")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="keep only the first N customers by id (deterministic; for tests)",
    )
    parser.add_argument(
        "--only-ingest", action="store_true", help="build the canonical tables and stop"
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="ranker epochs (at most)")
    parser.add_argument(
        "--preferred-batch-sizes",
        type=batch_sizes,
        default=None,
        help="Triton dynamic batching preferred sizes, comma-separated, or 'none' "
        "(default none: merge whatever has queued)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="Triton dynamic batching delay in microseconds (default 2000)",
    )
    parser.add_argument(
        "--instances", type=int, default=None, help="Triton instances per model (default 2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if not (args.data_dir / ingest.RAW_FILE).is_file():
        parser.error(f"{args.data_dir / ingest.RAW_FILE} not found; pass --data-dir")
    if args.only_ingest:
        run_ingest(args.data_dir, args.out / "data", force=args.force)
        return
    options = build_options(args)
    started = time.perf_counter()
    timings = run_pipeline(args.data_dir, args.out, options, force=args.force)
    _log.info(
        "pipeline done in %.1f s: %s",
        time.perf_counter() - started,
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )


def batch_sizes(text: str) -> tuple[int, ...]:
    """``--preferred-batch-sizes``: ``"600,1200"`` -> (600, 1200); ``"none"`` or ``""`` -> ().

    Raises:
        argparse.ArgumentTypeError: a size is not a positive integer.
    """
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text!r}")
    return sizes


def build_options(args: argparse.Namespace) -> Any:
    """Pipeline options from the command line (defaults where not given)."""
    import dataclasses

    from triton_models import pipeline

    opts = pipeline.PipelineOptions(sample=args.sample)
    train = dataclasses.replace(opts.train, progress=not args.no_progress)
    if args.max_epochs is not None:
        train = dataclasses.replace(train, max_epochs=args.max_epochs)
    serving = opts.serving
    if args.preferred_batch_sizes is not None:
        serving = dataclasses.replace(serving, preferred_batch_sizes=args.preferred_batch_sizes)
    if args.max_queue_delay_us is not None:
        serving = dataclasses.replace(serving, max_queue_delay_us=args.max_queue_delay_us)
    if args.instances is not None:
        serving = dataclasses.replace(serving, instance_count=args.instances)
    return dataclasses.replace(opts, train=train, serving=serving)


if __name__ == "__main__":
    main()
