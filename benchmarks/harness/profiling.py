"""Profile the gateway under load with py-spy, and say where the time goes.

py-spy (a dev dependency) samples a running process from outside, so it profiles the very
gateway the scenarios started, without pausing it:
`py-spy record --pid PID --duration S --format raw -o FILE`. The raw output is collapsed
stacks (one `frame;frame;... count` line per distinct stack), which speedscope.app and
`flamegraph.pl` open as a flame graph; `summarize` turns it into the report's table of the
functions holding the most samples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# py-spy frame: "function (path/to/file.py:line)"; the report keeps the last two path parts.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?):(?P<line>\d+)\)$")


def py_spy_path() -> str | None:
    """The py-spy binary of this environment (or on PATH), if any."""
    local = Path(sys.executable).parent / "py-spy"
    if local.is_file():
        return str(local)
    return shutil.which("py-spy")


def py_spy_record(pid: int, duration_s: float, output: Path) -> subprocess.Popen[bytes]:
    """Starts `py-spy record` against `pid`; it ends by itself after `duration_s`.

    Raises:
        RuntimeError: py-spy is not installed (`make setup` installs it with the dev group).
    """
    path = py_spy_path()
    if path is None:
        raise RuntimeError("py-spy is not installed: run `make setup` (dev dependency group)")
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            path,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",  # do not pause the gateway while sampling
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _short(frame: str) -> str:
    """`function (package/module.py:line)` without the line and the path's leading folders."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = "/".join(match["path"].split("/")[-2:])
    return f"{match['function']} ({path})"


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """The functions holding the most samples in py-spy's collapsed stacks: inclusive (the
    function or anything it called was running) and self (the function itself was running),
    as shares of all samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": round(n / total, 4)} for name, n in counter.most_common(top)
        ]

    return {"samples": total, "inclusive": shares(inclusive), "self": shares(own)}
