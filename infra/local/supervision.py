"""The local profiles' processes under supervisord: a process that dies is restarted (with
backoff when it keeps dying at start) while the others keep serving; everything stops only when
supervisord is told to (Ctrl-C or SIGTERM on the runner).

honcho, used before, stopped every process as soon as one exited: a Triton killed under load
took the gateways with it, and every later call failed although the gateways can answer
without Triton (fallback ranking). supervisord is the well-kept alternative: per program
`autorestart`, `startsecs` (how long a start must survive to count) and `startretries` (each
failed start waits one second longer than the previous one, then it gives up: FATAL), ordered
start and stop by `priority`, and a control socket for `supervisorctl` (status, pid, restart).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# A Unix socket path longer than this does not fit sockaddr_un (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process: its command line and the environment it adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartPolicy:
    """How supervisord starts, restarts and stops one kind of process."""

    priority: int
    """Start order (low first); stopped in the reverse order, each group fully before the next."""
    start_s: int
    """A start counts once the process has lived this long; dying sooner backs off."""
    stop_wait_s: int
    """After SIGTERM, how long before SIGKILL (a gateway drains within its grace period)."""
    start_retries: int = 30
    """Failed starts in a row before giving up (30: about eight minutes of growing waits)."""


# By role (the program name without its number). Stores first and last, since the gateways and
# the sidecar open them at start and drain into them at stop. A start counts only after the
# time a loaded 2-vCPU machine takes to fail one (a gateway's imports alone took 6 s there;
# Triton loads its models), so a process that cannot start backs off instead of looping.
_POLICIES = {
    "postgres": RestartPolicy(priority=10, start_s=3, stop_wait_s=30),
    "redis": RestartPolicy(priority=10, start_s=2, stop_wait_s=15),
    "triton": RestartPolicy(priority=20, start_s=30, stop_wait_s=30),
    "sidecar": RestartPolicy(priority=30, start_s=10, stop_wait_s=20),
    "gateway": RestartPolicy(priority=40, start_s=15, stop_wait_s=30),
    "nginx": RestartPolicy(priority=50, start_s=2, stop_wait_s=15),
    "prometheus": RestartPolicy(priority=60, start_s=2, stop_wait_s=15),
}
_DEFAULT_POLICY = RestartPolicy(priority=50, start_s=3, stop_wait_s=20)


def restart_policy(name: str) -> RestartPolicy:
    """The policy for program `name` (`gateway2` is a `gateway`)."""
    return _POLICIES.get(name.rstrip("0123456789"), _DEFAULT_POLICY)


@dataclass(frozen=True)
class SupervisorFiles:
    """Where one run's supervisord keeps its configuration, control socket, pid and log."""

    config: Path
    socket: Path
    pidfile: Path
    log: Path

    @classmethod
    def under(cls, run_dir: Path) -> SupervisorFiles:
        socket = run_dir / "supervisor.sock"
        if len(str(socket)) > _MAX_SOCKET_PATH:
            # Deep run folders (pytest's) do not fit a Unix socket path: a short one per folder.
            digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
            socket = Path(tempfile.gettempdir()) / f"recsys-supervisor-{digest}.sock"
        return cls(
            config=run_dir / "supervisord.conf",
            socket=socket,
            pidfile=run_dir / "supervisord.pid",
            log=run_dir / "supervisord.log",
        )


def _escape(value: str) -> str:
    # supervisord expands %(name)s in values; a literal % is written %%.
    return value.replace("%", "%%")


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"program name {name!r}: letters, digits, '-' and '_' only")
    return name


def supervisord_config(
    processes: Mapping[str, ProcessSpec], files: SupervisorFiles, cwd: Path
) -> str:
    """supervisord's configuration for `processes`, run from `cwd`, logging to its stdout.

    Each program's extra environment goes through `env KEY=VALUE ... argv` (env execs the
    command, so supervisord's pid is the program's own) rather than supervisord's
    `environment=`, whose parser strips quotes and splits on commas.
    """
    sections = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_escape(str(files.log))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={_escape(str(files.pidfile))}",
        f"directory={_escape(str(cwd))}",
        # Said explicitly when root (as in CI containers), else supervisord logs a CRIT line.
        # The effective user's own name (not $USER, which may name someone else under sudo).
        *([f"user={pwd.getpwuid(0).pw_name}"] if os.geteuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file={_escape(str(files.socket))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_escape(str(files.socket))}",
        "",
    ]
    for name, spec in processes.items():
        policy = restart_policy(name)
        argv = ["env", *(f"{key}={value}" for key, value in spec.env.items()), *spec.argv]
        sections += [
            f"[program:{_check_name(name)}]",
            f"command={_escape(shlex.join(argv))}",
            f"directory={_escape(str(cwd))}",
            f"priority={policy.priority}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={policy.start_s}",
            f"startretries={policy.start_retries}",
            "stopsignal=TERM",
            f"stopwaitsecs={policy.stop_wait_s}",
            # The whole process group: nginx's workers, Triton's Python-backend stubs.
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=/dev/stdout",
            "stdout_logfile_maxbytes=0",
            "",
        ]
    return "\n".join(sections)


def write_config(processes: Mapping[str, ProcessSpec], run_dir: Path, cwd: Path) -> SupervisorFiles:
    """Writes the configuration under `run_dir` (created) and returns the run's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = SupervisorFiles.under(run_dir)
    files.config.write_text(supervisord_config(processes, files, cwd), encoding="utf-8")
    return files


def supervisord_argv(files: SupervisorFiles) -> list[str]:
    """The command that runs supervisord in the foreground with this run's configuration."""
    return [sys.executable, "-m", "supervisor.supervisord", "--configuration", str(files.config)]
