"""The client distribution (protos/pyproject.toml): the dependency floors its generated code
needs (the grpcio-tools version that wrote the `_pb2_grpc` modules, which refuse an older grpcio,
and the protobuf gencode version of the `_pb2` modules, which refuse an older runtime or another
major version), and a helper that type-checks on the oldest Python it declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO

STUBS = REPO / "protos" / "recsys" / "v1"


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "protos" / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def _requirements() -> dict[str, Requirement]:
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    return {r.name: r for r in map(Requirement, dependencies)}


def _generated_grpc_versions() -> set[Version]:
    found = {
        Version(m.group(1))
        for path in STUBS.glob("*_pb2_grpc.py")
        if (m := re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text(), re.M))
    }
    assert len(found) == 1, f"stubs from several grpcio-tools versions: {found}"
    return found


def _protobuf_gencode_versions() -> set[Version]:
    pattern = (
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
        r"\s*(\d+),\s*(\d+),\s*(\d+),"
    )
    found = {
        Version(".".join(m.groups()))
        for path in STUBS.glob("*_pb2.py")
        if (m := re.search(pattern, path.read_text()))
    }
    assert len(found) == 1, f"stubs from several protobuf versions: {found}"
    return found


def test_grpcio_floor_is_the_version_that_generated_the_stubs() -> None:
    (generated,) = _generated_grpc_versions()
    grpcio = _requirements()["grpcio"]
    assert str(grpcio.specifier) == f">={generated}"


def test_protobuf_floor_and_major_match_the_gencode() -> None:
    (gencode,) = _protobuf_gencode_versions()
    protobuf = _requirements()["protobuf"]
    assert protobuf.specifier == Requirement(f"p>={gencode},<{gencode.major + 1}").specifier


def test_the_service_requires_what_its_copy_of_the_stubs_needs() -> None:
    # The service imports the same generated modules (dev-mode-dirs), so its floors are the same.
    service = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {r.name: r.specifier for r in map(Requirement, service)}
    for name, requirement in _requirements().items():
        assert declared[name] == requirement.specifier, name


def test_only_grpcio_and_protobuf_are_required() -> None:
    assert set(_requirements()) == {"grpcio", "protobuf"}


def test_helper_type_checks_on_the_oldest_python_declared(tmp_path: Path) -> None:
    # The tests run on 3.11 only; mypy checks the helper against the oldest declared Python.
    requires = _project()["requires-python"]
    assert requires == ">=3.10"  # grpcio's own floor at the version required
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--python-version",
            "3.10",
            "--cache-dir",
            str(tmp_path / "mypy"),
            "protos/recsys/client",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
