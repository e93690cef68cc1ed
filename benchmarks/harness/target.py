"""How the load benchmarks reach a gateway they did not start: `--target host:port`, TLS and a
bearer token.

By default the benchmarks start the system they measure and call it in plaintext on
127.0.0.1. With `--target` they call an existing deployment instead (a cluster's ingress, a
`make stack` on another machine), so users can measure their own: TLS with the system's roots
(`--tls`) or a CA file (`--ca-file`, optionally `--server-name` when the certificate names
another host than the address dialled), and `authorization: Bearer <token>` read from
`--token-file` (a file, so the token appears neither in `ps` nor in shell history; ghz gets it
through a 0600 metadata file for the same reason).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

METADATA_FILENAME = "ghz-metadata.json"


@dataclass(frozen=True)
class Connection:
    """Transport security and credentials of every call to the measured gateway."""

    tls: bool = False
    """TLS instead of plaintext (implied by `ca_file`)."""
    ca_file: Path | None = None
    """PEM roots the server certificate must chain to; None: the system's roots."""
    server_name: str | None = None
    """Name the certificate is checked against when it differs from the dialled host."""
    token: str | None = field(default=None, repr=False)
    """Bearer token sent as `authorization` metadata on every call."""

    def __post_init__(self) -> None:
        if self.ca_file is not None and not self.tls:
            object.__setattr__(self, "tls", True)
        if self.server_name is not None and not self.tls:
            raise ValueError("a server name only applies with TLS (--tls or --ca-file)")

    def describe(self) -> str:
        """One line for the report, without the token."""
        if not self.tls:
            security = "plaintext"
        else:
            roots = f"CA {self.ca_file}" if self.ca_file else "system roots"
            name = f", server name {self.server_name}" if self.server_name else ""
            security = f"TLS ({roots}{name})"
        return f"{security}, {'bearer token' if self.token else 'no token'}"

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of every call."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def ghz_args(self, workdir: Path) -> list[str]:
        """ghz's transport options; a token goes into a private metadata file in `workdir`."""
        if not self.tls:
            args = ["--insecure"]
        else:
            args = [f"--cacert={self.ca_file}"] if self.ca_file else []
            if self.server_name:
                args.append(f"--cname={self.server_name}")
        if self.token:
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / METADATA_FILENAME
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(dict(self.call_metadata()), handle)
            args.append(f"--metadata-file={path}")
        return args

    def channel(self, address: str) -> grpc.Channel:
        """A blocking channel to `address` with this transport (the caller closes it)."""
        if not self.tls:
            return grpc.insecure_channel(address)
        roots = self.ca_file.read_bytes() if self.ca_file else None
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options)


PLAINTEXT = Connection()
"""What the benchmarks use for the systems they start themselves."""


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """`--target`, `--tls`, `--ca-file`, `--server-name`, `--token-file`."""
    group = parser.add_argument_group("existing deployment")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=None,
        help="measure this running gateway (or its load balancer) instead of starting one",
    )
    group.add_argument("--tls", action="store_true", help="TLS with the system's root CAs")
    group.add_argument(
        "--ca-file", type=Path, default=None, help="PEM CA bundle for TLS (implies --tls)"
    )
    group.add_argument(
        "--server-name",
        default=None,
        help="name the server certificate must carry, when not the target's host",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the bearer token sent as 'authorization: Bearer <token>'",
    )


def connection_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Connection:
    """The connection the arguments ask for; a bad combination or file is a usage error."""
    remote_only = [
        flag
        for flag, value in (
            ("--tls", args.tls),
            ("--ca-file", args.ca_file),
            ("--server-name", args.server_name),
            ("--token-file", args.token_file),
        )
        if value
    ]
    if args.target is None:
        if remote_only:
            parser.error(f"{', '.join(remote_only)} need --target")
        return PLAINTEXT
    host, sep, port = args.target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--target must be HOST:PORT, got {args.target!r}")
    if args.ca_file is not None and not args.ca_file.is_file():
        parser.error(f"--ca-file {args.ca_file}: no such file")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            parser.error(f"--token-file {args.token_file}: {exc.strerror}")
        if not token:
            parser.error(f"--token-file {args.token_file} is empty")
    try:
        return Connection(
            tls=args.tls, ca_file=args.ca_file, server_name=args.server_name, token=token
        )
    except ValueError as exc:
        parser.error(str(exc))
