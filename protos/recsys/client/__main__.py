"""`python -m recsys.client`: call a running gateway from a shell without grpcurl.

    python -m recsys.client --target 127.0.0.1:50051 recommend 17850 -n 5

Prints the reply as JSON (protobuf's JSON mapping); a failed call prints its status code and
message on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import grpc
from google.protobuf import json_format

from recsys.client.client import RecommendationClient
from recsys.client.service_config import CallPolicy

DISTRIBUTION = "recsys-client"


def client_version() -> str:
    """The installed `recsys-client` distribution's version; from the source tree (the service's
    environment imports `recsys` from protos/ without installing that distribution), the version
    in protos/pyproject.toml, and "unknown" when neither is there."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        # tomllib is Python 3.11+ and the distribution supports 3.10: imported by name, so
        # that mypy's 3.10 check of this package passes and 3.10 ends in ImportError.
        tomllib = importlib.import_module("tomllib")
        project = tomllib.loads(pyproject.read_text())["project"]
    except (ImportError, OSError, ValueError, KeyError):
        return "unknown"
    if project.get("name") != DISTRIBUTION:
        return "unknown"
    return f"{project['version']} (source tree)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.client", description="Call the recommendation service."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {client_version()}")
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per call")
    parser.add_argument("--token", default=None, help="bearer token, when the server needs one")
    commands = parser.add_subparsers(dest="command", required=True)
    recommend = commands.add_parser("recommend", help="ranked items for one user")
    recommend.add_argument("user_id")
    recommend.add_argument("-n", "--num-items", type=int, default=None)
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        parser.error(f"--deadline must be > 0, got {args.deadline}")
    policy = CallPolicy(recommend_timeout_s=args.deadline)
    with RecommendationClient(args.target, token=args.token, policy=policy) as client:
        try:
            reply = client.recommend(args.user_id, args.num_items)
        except grpc.RpcError as exc:
            # The blocking stubs raise errors that are also grpc.Call (code and details).
            summary = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else exc
            print(summary, file=sys.stderr)
            return 1
    print(json_format.MessageToJson(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
