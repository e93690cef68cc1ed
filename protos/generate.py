"""Regenerates the Python stubs of the API contract (`make protos`).

The generated modules are committed so that `recsys.v1` imports without a build step; a test
regenerates them into a temporary folder and fails when the committed copies are stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("recsys/v1/*.proto"))


def generate(out_dir: Path) -> None:
    """Writes `*_pb2.py`, `*_pb2_grpc.py` and their `.pyi` type stubs under `out_dir`.

    Raises:
        RuntimeError: protoc reported an error (its message is on stderr).
    """
    include = Path(protoc.__file__).resolve().parent / "_proto"
    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy*) on PATH: use this environment's.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(path) for path in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the message above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root folder")
    generate(parser.parse_args().out)
    print(f"generated stubs for {len(PROTO_FILES)} proto file(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
