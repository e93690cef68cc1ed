"""`--target` options of the load benchmarks: ghz arguments, metadata and usage errors."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from benchmarks.harness.ghz import GhzRun, ghz_argv
from benchmarks.harness.target import (
    METADATA_FILENAME,
    PLAINTEXT,
    Connection,
    add_target_arguments,
    connection_from_args,
)


def _parse(argv: list[str]) -> Connection:
    parser = argparse.ArgumentParser(prog="bench")
    add_target_arguments(parser)
    return connection_from_args(parser, parser.parse_args(argv))


def test_plaintext_by_default(tmp_path: Path) -> None:
    assert _parse([]) is PLAINTEXT
    assert PLAINTEXT.ghz_args(tmp_path) == ["--insecure"]
    assert PLAINTEXT.call_metadata() == ()
    assert not (tmp_path / METADATA_FILENAME).exists()


def test_tls_with_a_ca_file_server_name_and_token(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here\n")
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    connection = _parse(
        [
            "--target",
            "gw.example.com:443",
            "--ca-file",
            str(ca),
            "--server-name",
            "recsys.internal",
            "--token-file",
            str(token),
        ]
    )
    assert connection.tls  # implied by the CA file
    workdir = tmp_path / "work"
    args = connection.ghz_args(workdir)
    metadata = workdir / METADATA_FILENAME
    assert args == [f"--cacert={ca}", "--cname=recsys.internal", f"--metadata-file={metadata}"]
    # The token reaches ghz through a private file, never its command line.
    assert json.loads(metadata.read_text()) == {"authorization": "Bearer t0ken"}
    assert stat.S_IMODE(metadata.stat().st_mode) == 0o600
    assert connection.call_metadata() == (("authorization", "Bearer t0ken"),)
    assert "t0ken" not in repr(connection) and "t0ken" not in connection.describe()
    assert connection.describe() == f"TLS (CA {ca}, server name recsys.internal), bearer token"

    run = GhzRun(
        target="gw.example.com:443",
        data_file=tmp_path / "d.json",
        duration_s=1.0,
        transport=tuple(args),
    )
    argv = ghz_argv(Path("/bin/ghz"), run, tmp_path / "out.json")
    assert "--insecure" not in argv and f"--cacert={ca}" in argv
    assert all("t0ken" not in a for a in argv)
    assert argv[-1] == "gw.example.com:443"


def test_tls_with_system_roots() -> None:
    connection = _parse(["--target", "gw.example.com:443", "--tls"])
    assert connection.ghz_args(Path("/nonexistent")) == []  # ghz verifies with system roots
    assert connection.describe() == "TLS (system roots), no token"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls"], "--tls need --target"),
        (["--target", "no-port"], "--target must be HOST:PORT"),
        (["--target", "host:99999"], "--target must be HOST:PORT"),
        (["--target", "h:1", "--server-name", "x"], "a server name only applies with TLS"),
        (["--target", "h:1", "--ca-file", "/nonexistent/ca.pem"], "--ca-file /nonexistent"),
        (["--target", "h:1", "--token-file", "/nonexistent/t"], "--token-file /nonexistent"),
    ],
)
def test_usage_errors_name_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_empty_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    with pytest.raises(SystemExit):
        _parse(["--target", "h:1", "--token-file", str(token)])
    assert "is empty" in capsys.readouterr().err


def test_make_bench_checks_the_target_options_too(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import run_all

    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--ca-file", "ca.pem"])
    assert exit_info.value.code == 2
    assert "--ca-file need --target" in capsys.readouterr().err
