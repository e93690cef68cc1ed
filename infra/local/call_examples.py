"""The commands `make run` prints for calling the service from another shell: ones whose tool
exists on this machine.

grpcurl is installed only by `make tools` (into .tools/bin, which an ordinary shell does not
have on its PATH), so the commands name it by its full path when it is there, and otherwise
call the service with the Python client (`python -m recsys.client`) of the interpreter that
runs the service.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

EXAMPLE_USER_ID = "17850"
"""A customer of the data set with a long purchase history."""
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def connect_target(bound: str) -> str:
    """`host:port` to connect to a server bound to `bound` (a wildcard bind is reached locally)."""
    host, _, port = bound.rpartition(":")
    return f"{'127.0.0.1' if host in _ANY_ADDRESS else host}:{port}"


def find_grpcurl(tools_dir: Path) -> Path | None:
    """grpcurl from `make tools` (in `tools_dir`), else one on the PATH, as a full path."""
    built = tools_dir / "grpcurl"
    if built.is_file():
        return built.resolve()
    found = shutil.which("grpcurl")
    return Path(found).resolve() if found else None


def call_examples(target: str, grpcurl: Path | None, python: str) -> list[str]:
    """Shell commands that list the services and ask for recommendations (plaintext gRPC).

    Args:
        target: `host:port` of the service.
        grpcurl: full path of grpcurl, None when it is not installed.
        python: the interpreter that has the `recsys` package (the service's own).
    """
    if grpcurl is not None:
        tool = shlex.quote(str(grpcurl))
        request = json.dumps({"user_id": EXAMPLE_USER_ID, "num_items": 5})
        return [
            f"{tool} -plaintext {target} list",
            f"{tool} -plaintext -d {shlex.quote(request)} {target} "
            "recsys.v1.RecommendationService/Recommend",
        ]
    return [
        f"{shlex.quote(python)} -m recsys.client --target {target} "
        f"recommend {EXAMPLE_USER_ID} -n 5",
        "(`make tools` installs grpcurl and ghz, which find the API by server reflection)",
    ]
