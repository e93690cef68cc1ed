"""Every .proto file under protos/ declares the options other languages generate from
(`go_package`, `java_package`, `java_multiple_files`, `java_outer_classname`), read from the
generated descriptors (the committed `_pb2` modules, which tests/unit/test_protos_fresh.py
keeps in step with the .proto files), not from the text."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tests.conftest import REPO

PROTOS = REPO / "protos"
PROTO_FILES = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))


def _file_proto(name: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of `name` ("recsys/v1/admin.proto") from its generated module."""
    module_name = Path(name).with_suffix("").as_posix().replace("/", ".") + "_pb2"
    module = importlib.import_module(module_name)
    assert module.DESCRIPTOR.name == name
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def test_both_proto_files_are_checked() -> None:
    assert PROTO_FILES == ["recsys/v1/admin.proto", "recsys/v1/recommendation.proto"]


@pytest.mark.parametrize("name", PROTO_FILES)
def test_language_options(name: str) -> None:
    proto = _file_proto(name)
    options = proto.options
    for option in ("go_package", "java_package", "java_multiple_files", "java_outer_classname"):
        assert options.HasField(option), f"{name} lacks option {option}"
    assert options.go_package == "recsys/gen/go/recsys/v1;recsysv1"
    assert options.java_package == f"com.{proto.package}"
    assert options.java_multiple_files
    # buf's default: the file name in PascalCase with a Proto suffix.
    stem = Path(name).stem
    assert options.java_outer_classname == stem.title().replace("_", "") + "Proto"


def test_files_of_one_package_share_the_language_packages() -> None:
    """Go and Java need one package per proto package (buf's PACKAGE_SAME_* lint rules)."""
    protos = [_file_proto(name) for name in PROTO_FILES]
    for option in ("go_package", "java_package", "java_multiple_files"):
        by_package: dict[str, set[object]] = {}
        for proto in protos:
            by_package.setdefault(proto.package, set()).add(getattr(proto.options, option))
        assert all(len(values) == 1 for values in by_package.values()), (option, by_package)
    classnames = [proto.options.java_outer_classname for proto in protos]
    assert len(set(classnames)) == len(classnames), classnames
