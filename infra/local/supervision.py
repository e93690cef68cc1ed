"""The local profiles' processes under supervisord: a process that dies is restarted (with
backoff when it keeps dying at start) while the others keep serving; everything stops only when
supervisord is told to (Ctrl-C or SIGTERM on the runner).

honcho, used before, stopped every process as soon as one exited: a Triton killed under load
took the gateways with it, and every later call failed although the gateways can answer
without Triton (fallback ranking). supervisord is the well-kept alternative: per program
`autorestart`, `startsecs` (how long a start must survive to count) and `startretries` (each
failed start waits one second longer than the previous one, then it gives up: FATAL), ordered
start and stop by `priority`, and a control socket for `supervisorctl` (status, pid, restart).

Each program's output goes to its own file under the run folder's `logs/`; the runner echoes
those files to its terminal, each line after the program's name (`echo_logs`), and watches the
programs over the control socket (`watch_programs`): one that supervisord gave up on (FATAL) is
reported with its last exit and the end of its log, and started again after a longer pause.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import sys
import tempfile
import threading
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, TextIO

from supervisor.xmlrpc import SupervisorTransport

from infra.local.logs import log_tail

# A Unix socket path longer than this does not fit sockaddr_un (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100
# A program's log file is rotated at this size (one backup kept).
_PROGRAM_LOG_MAX_BYTES = 50 * 1024 * 1024


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
class ProcessSpec:
    """One supervised process: its command line, the environment it adds and, when not the
    one its name implies (`restart_policy`), how it is restarted."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    policy: RestartPolicy | None = None


@dataclass(frozen=True)
class SupervisorFiles:
    """Where one run's supervisord keeps its configuration, control socket, pid and log."""

    config: Path
    socket: Path
    pidfile: Path
    log: Path
    logs: Path
    """Folder of the programs' own logs, `<name>.log`."""

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
            logs=run_dir / "logs",
        )

    def program_log(self, name: str) -> Path:
        """The file program `name`'s output (stdout and stderr) goes to."""
        return self.logs / f"{name}.log"


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
        policy = spec.policy or restart_policy(name)
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
            # A file per program, so its last lines can be shown when it fails; the runner
            # echoes it to the terminal (echo_logs).
            f"stdout_logfile={_escape(str(files.program_log(name)))}",
            f"stdout_logfile_maxbytes={_PROGRAM_LOG_MAX_BYTES}",
            "stdout_logfile_backups=1",
            "",
        ]
    return "\n".join(sections)


def write_config(processes: Mapping[str, ProcessSpec], run_dir: Path, cwd: Path) -> SupervisorFiles:
    """Writes the configuration under `run_dir` (created), removes the program logs of an earlier
    run there, and returns the run's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = SupervisorFiles.under(run_dir)
    files.logs.mkdir(exist_ok=True)
    clear_program_logs(files)
    files.config.write_text(supervisord_config(processes, files, cwd), encoding="utf-8")
    return files


def supervisord_argv(files: SupervisorFiles) -> list[str]:
    """The command that runs supervisord in the foreground with this run's configuration."""
    return [sys.executable, "-m", "supervisor.supervisord", "--configuration", str(files.config)]


def clear_program_logs(files: SupervisorFiles) -> None:
    """Removes the program logs of an earlier run in the same folder (supervisord appends)."""
    for path in files.logs.glob("*.log*"):
        path.unlink(missing_ok=True)


@contextmanager
def control(files: SupervisorFiles) -> Iterator[Any]:
    """supervisord's XML-RPC namespace over the run's control socket (as supervisorctl uses)."""
    transport = SupervisorTransport(None, None, f"unix://{files.socket}")
    try:
        yield xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
    finally:
        transport.close()


def echo_logs(
    files: SupervisorFiles,
    names: list[str],
    stopped: threading.Event,
    out: TextIO,
    poll_s: float = 0.2,
) -> None:
    """Copies the programs' new log lines to `out`, each as `name | line`, until `stopped`;
    then once more, for what they wrote while stopping."""
    width = max(map(len, names), default=0)
    offsets = dict.fromkeys(names, 0)
    partial = dict.fromkeys(names, b"")

    def drain(final: bool) -> None:
        for name in names:
            try:
                with files.program_log(name).open("rb") as log:
                    if os.fstat(log.fileno()).st_size < offsets[name]:  # rotated
                        offsets[name], partial[name] = 0, b""
                    log.seek(offsets[name])
                    data = log.read()
            except FileNotFoundError:
                continue
            offsets[name] += len(data)
            *lines, partial[name] = (partial[name] + data).split(b"\n")
            if final and partial[name]:
                lines.append(partial[name])
                partial[name] = b""
            if lines:
                text = (line.decode("utf-8", errors="replace").rstrip("\r") for line in lines)
                out.write("".join(f"{name:<{width}} | {line}\n" for line in text))
        out.flush()

    while not stopped.wait(poll_s):
        drain(final=False)
    drain(final=True)


def last_exit(files: SupervisorFiles, info: Mapping[str, Any]) -> str:
    """How a program last ended: supervisord's own log says ("exited: NAME (exit status 3; not
    expected)"); its process info keeps no status for a start that exited too quickly."""
    spawnerr = str(info.get("spawnerr") or "")
    # "Exited too quickly": it ran and exited; any other spawnerr: it could not be run at all.
    if spawnerr and not spawnerr.startswith("Exited too quickly"):
        return f"not started: {spawnerr}"
    exited = re.compile(
        rf"exited: {re.escape(str(info['name']))} \((.+?)(?:; (?:not )?expected)?\)"
    )
    for line in reversed(log_tail(files.log, 400).splitlines()):
        if found := exited.search(line):
            return found.group(1)
    return f"exit status {info.get('exitstatus')}" if info.get("exitstatus") else "unknown"


@dataclass(frozen=True)
class FatalRetry:
    """What the runner does about a program supervisord gave up on (FATAL)."""

    after_s: float = 300.0
    """Pause before it is started again (a fresh round of `startretries` with growing waits)."""
    rounds: int = 5
    """Rounds in a row before the runner gives up too (5: about an hour with the default
    policies); a program that runs again gets them back."""


DEFAULT_RETRY = FatalRetry()


def _fatal_report(
    files: SupervisorFiles, info: Mapping[str, Any], then: str, tail_lines: int
) -> str:
    name = str(info["name"])
    log = files.program_log(name)
    tail = log_tail(log, tail_lines)
    return (
        f"ERROR: {name} is down: supervisord gave up restarting it after repeated failed starts "
        f"(FATAL; last exit: {last_exit(files, info)}). The other processes keep serving. "
        f"The end of its log ({log}):\n"
        + "".join(f"    {line}\n" for line in tail.splitlines())
        + then
    )


def watch_programs(
    files: SupervisorFiles,
    stopped: threading.Event,
    report: Callable[[str], None],
    retry: FatalRetry = DEFAULT_RETRY,
    poll_s: float = 1.0,
    tail_lines: int = 20,
) -> None:
    """Watches supervisord's programs until `stopped`. One that supervisord gave up on (FATAL:
    `startretries` failed starts in a row) is reported with its last exit and the end of its
    log, the others are left serving, and after `retry.after_s` it is started again, at most
    `retry.rounds` times in a row."""
    ctl = f"python -m supervisor.supervisorctl -c {files.config}"
    fatal_at: dict[str, float] = {}  # when a FATAL program was reported (time.monotonic)
    rounds: dict[str, int] = {}  # rounds started again since the program last ran
    while not stopped.wait(poll_s):
        try:
            with control(files) as supervisor:
                infos: list[dict[str, Any]] = supervisor.getAllProcessInfo()
                now = monotonic()
                for info in infos:
                    name = str(info["name"])
                    if info["statename"] != "FATAL":
                        fatal_at.pop(name, None)
                        if info["statename"] == "RUNNING" and rounds.pop(name, 0):
                            report(f"{name} is running again.")
                        continue
                    used = rounds.get(name, 0)
                    if name not in fatal_at:
                        fatal_at[name] = now
                        then = (
                            f"It will be started again in {retry.after_s:.0f} s (round "
                            f"{used + 1} of {retry.rounds}); `{ctl} start {name}` does it now."
                            if used < retry.rounds
                            else f"Started again {used} times after a pause, it failed each "
                            f"time; it stays stopped: `{ctl} start {name}` once fixed."
                        )
                        report(_fatal_report(files, info, then, tail_lines))
                    elif used < retry.rounds and now - fatal_at[name] >= retry.after_s:
                        if stopped.is_set():
                            return
                        rounds[name] = used + 1
                        del fatal_at[name]
                        try:
                            supervisor.startProcess(name, False)
                        except xmlrpc.client.Fault as exc:
                            report(f"ERROR: could not start {name} again: {exc.faultString}")
        except (OSError, xmlrpc.client.Error):
            continue  # supervisord not up yet, or on its way out
