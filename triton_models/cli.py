"""`make models`: runs the offline pipeline from the raw data into the build folder.

Each step records a content hash of its inputs (data files and the code that transforms them)
next to its outputs, so an unchanged input is not rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from triton_models import categories, ingest

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-models", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data/uci_online_retail"),
        help="folder with online_retail.csv.gz",
    )
    parser.add_argument("--out", type=Path, default=Path("build"), help="build folder")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if not (args.data_dir / ingest.RAW_FILE).is_file():
        parser.error(f"{args.data_dir / ingest.RAW_FILE} not found; pass --data-dir")
    run_ingest(args.data_dir, args.out / "data", force=args.force)


if __name__ == "__main__":
    main()
