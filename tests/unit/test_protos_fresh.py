"""The committed stubs equal what `make protos` generates from the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    produced = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert produced, "protoc produced nothing"
    for relative in produced:
        committed = REPO / "protos" / relative
        assert committed.is_file(), f"{relative} is not committed: run `make protos`"
        assert (
            committed.read_bytes() == (tmp_path / relative).read_bytes()
        ), f"{relative} is stale: run `make protos`"
