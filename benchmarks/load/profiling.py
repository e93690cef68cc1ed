"""Profile the gateway under load with py-spy (attach by pid) or pyinstrument.

py-spy samples a running process from outside, so it profiles the very gateway the scenarios
started: `py-spy record --pid PID --duration S --format speedscope -o FILE`. pyinstrument
has to run inside the process; it is supported by starting the gateway under
`python -m pyinstrument` (see `pyinstrument_argv`), which the scenarios do when asked.

Neither is a dependency of the project yet; `profiler_status` says which is missing and
what to add (`py-spy` to the dev dependency group: `uv add --dev py-spy`).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROFILERS = ("py-spy", "pyinstrument")
_ADVICE = {
    "py-spy": "add `py-spy` (e.g. py-spy==0.4.0) to the dev dependency group: "
    "`uv add --dev py-spy`, then `uv lock`",
    "pyinstrument": "add `pyinstrument` to the dev dependency group: `uv add --dev pyinstrument`",
}


@dataclass(frozen=True)
class ProfilerStatus:
    name: str
    available: bool
    detail: str
    """Where it was found, or what to install."""


def _py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.is_file():
        return str(local)
    return shutil.which("py-spy")


def profiler_status(name: str) -> ProfilerStatus:
    """Whether `name` (py-spy or pyinstrument) can be used here."""
    if name == "py-spy":
        path = _py_spy_path()
        if path:
            return ProfilerStatus(name, True, path)
    elif name == "pyinstrument":
        if importlib.util.find_spec("pyinstrument") is not None:
            return ProfilerStatus(name, True, "importable")
    else:
        raise ValueError(f"unknown profiler {name!r}; choose one of {PROFILERS}")
    return ProfilerStatus(name, False, f"{name} is not installed; {_ADVICE[name]}")


def py_spy_record(pid: int, duration_s: float, output: Path) -> subprocess.Popen[bytes]:
    """Start `py-spy record` against `pid`; it ends by itself after `duration_s`."""
    path = _py_spy_path()
    if path is None:
        raise RuntimeError(profiler_status("py-spy").detail)
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
            "speedscope",
            "--output",
            str(output),
            "--nonblocking",  # do not pause the gateway while sampling
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def pyinstrument_argv(module_argv: list[str], output: Path) -> list[str]:
    """Run `python -m <module_argv...>` under pyinstrument, writing HTML to `output` at exit."""
    return [
        sys.executable,
        "-m",
        "pyinstrument",
        "--renderer",
        "html",
        "--outfile",
        str(output),
        "-m",
        *module_argv,
    ]
