"""The commands `make run` prints name a tool that exists: grpcurl by its full path when it is
installed, else the service's Python with the client module."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from infra.local.call_examples import call_examples, connect_target, find_grpcurl


def test_grpcurl_from_make_tools_is_named_by_full_path(tmp_path: Path) -> None:
    tools = tmp_path / "tools dir"
    tools.mkdir()
    (tools / "grpcurl").write_text("")
    grpcurl = find_grpcurl(tools)
    assert grpcurl == (tools / "grpcurl").resolve()
    listed, called = call_examples("127.0.0.1:50051", grpcurl, "/venv/bin/python")
    assert shlex.split(listed) == [str(grpcurl), "-plaintext", "127.0.0.1:50051", "list"]
    assert shlex.split(called) == [
        str(grpcurl),
        "-plaintext",
        "-d",
        '{"user_id": "17850", "num_items": 5}',
        "127.0.0.1:50051",
        "recsys.v1.RecommendationService/Recommend",
    ]


def test_without_grpcurl_the_python_client_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no grpcurl anywhere
    assert find_grpcurl(tmp_path / "missing") is None
    command, hint = call_examples("127.0.0.1:50051", None, "/venv/bin/python")
    assert shlex.split(command) == [
        "/venv/bin/python",
        "-m",
        "recsys.client",
        "--target",
        "127.0.0.1:50051",
        "recommend",
        "17850",
        "-n",
        "5",
    ]
    assert "make tools" in hint


@pytest.mark.parametrize(
    ("bound", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "127.0.0.1:50051"),
        ("10.1.2.3:7000", "10.1.2.3:7000"),
    ],
)
def test_wildcard_binds_are_called_locally(bound: str, target: str) -> None:
    assert connect_target(bound) == target
