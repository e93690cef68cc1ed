"""supervisord's configuration for the runner's profiles: every process restarted, ordered
start and stop, environment passed without supervisord's lossy parser, output in a log file per
program echoed with the program's name; and a real supervisord restarting a killed program while
its sibling keeps running, and one it gave up on (FATAL) reported and started again."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from supervisor.xmlrpc import SupervisorTransport

from infra.local import supervision
from infra.local.supervision import FatalRetry, ProcessSpec, RestartPolicy, SupervisorFiles


def _parsed(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_every_program_restarts_and_stores_start_first_and_stop_last(tmp_path: Path) -> None:
    processes = {
        "gateway2": ProcessSpec(["python", "-m", "gateway.main"]),
        "postgres": ProcessSpec(["postgres", "-D", "data"]),
        "triton": ProcessSpec(["python", "-m", "infra.local.tritonserver"]),
        "nginx": ProcessSpec(["nginx", "-g", "daemon off;"]),
    }
    files = SupervisorFiles.under(tmp_path)
    config = _parsed(supervision.supervisord_config(processes, files, tmp_path))
    assert config.get("supervisord", "nodaemon") == "true"
    priorities = {name: config.getint(f"program:{name}", "priority") for name in processes}
    assert sorted(priorities, key=priorities.__getitem__) == [
        "postgres",
        "triton",
        "gateway2",
        "nginx",
    ]
    for name in processes:
        section = f"program:{name}"
        assert config.get(section, "autorestart") == "true"
        assert config.getint(section, "startretries") > 0
        assert config.get(section, "stdout_logfile") == str(files.program_log(name))
    # A gateway's start counts only after it had time to fail one (imports, config, bind).
    assert config.getint("program:gateway2", "startsecs") >= 10


def test_environment_and_percent_signs_survive(tmp_path: Path) -> None:
    spec = ProcessSpec(
        ["sh", "-c", "echo 100% done; exec true"],
        {"RECSYS__SERVING__PORT": "50052", "WITH_COMMA": 'a,b "quoted"'},
    )
    files = SupervisorFiles.under(tmp_path)
    text = supervision.supervisord_config({"gateway": spec}, files, tmp_path)
    command = _parsed(text).get("program:gateway", "command")
    # supervisord expands %(...)s: a literal % is doubled in the file, one after expansion.
    assert shlex.split(command.replace("%%", "%")) == [
        "env",
        "RECSYS__SERVING__PORT=50052",
        'WITH_COMMA=a,b "quoted"',
        "sh",
        "-c",
        "echo 100% done; exec true",
    ]


def test_program_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="program name"):
        supervision.supervisord_config(
            {"bad name]": ProcessSpec(["true"])}, SupervisorFiles.under(tmp_path), tmp_path
        )


def test_a_deep_run_folder_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["folder"] * 20)
    files = SupervisorFiles.under(deep)
    assert len(str(files.socket)) <= 100
    assert files.socket != SupervisorFiles.under(deep / "other").socket
    assert SupervisorFiles.under(tmp_path).socket == tmp_path / "supervisor.sock"


def _info(files: SupervisorFiles, name: str) -> dict[str, object]:
    transport = SupervisorTransport(None, None, f"unix://{files.socket}")
    try:
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        info = proxy.supervisor.getProcessInfo(name)
        assert isinstance(info, dict)
        return info
    finally:
        transport.close()


def _wait_running(files: SupervisorFiles, name: str, other_than: int = 0) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pid = int(str(_info(files, name)["pid"]))
            if pid not in (0, other_than):
                return pid
        except (OSError, xmlrpc.client.Fault):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} not running")


def test_supervisord_restarts_a_killed_program_and_leaves_the_other(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    files = supervision.write_config(
        {"gateway": ProcessSpec(sleeper), "triton": ProcessSpec(sleeper)}, tmp_path, tmp_path
    )
    supervisor = subprocess.Popen(
        supervision.supervisord_argv(files), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        killed = _wait_running(files, "triton")
        gateway = _wait_running(files, "gateway")
        os.kill(killed, signal.SIGKILL)
        restarted = _wait_running(files, "triton", other_than=killed)
        assert _wait_running(files, "gateway") == gateway  # untouched
        assert supervisor.poll() is None  # and supervisord did not stop everything
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)
    # Stopping supervisord stopped both programs.
    for pid in (gateway, restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_echo_logs_prefixes_each_line_with_its_program(tmp_path: Path) -> None:
    files = SupervisorFiles.under(tmp_path)
    files.logs.mkdir()
    files.program_log("triton").write_bytes(b"loading\r\nready\n")
    files.program_log("gateway2").write_bytes(b"serving\nhalf a li")
    out = StringIO()
    stopped = threading.Event()
    echo = threading.Thread(
        target=supervision.echo_logs,
        args=(files, ["triton", "gateway2", "sidecar"], stopped, out, 0.05),
    )
    echo.start()
    deadline = time.monotonic() + 5
    while "serving" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "half a li" not in out.getvalue()  # a partial line waits for its end
    with files.program_log("gateway2").open("ab") as log:
        log.write(b"ne\nstopped")
    stopped.set()
    echo.join(timeout=5)
    assert out.getvalue().splitlines() == [
        "triton   | loading",
        "triton   | ready",
        "gateway2 | serving",
        "gateway2 | half a line",
        "gateway2 | stopped",  # the last, unterminated line comes out at the end
    ]


def test_a_new_run_starts_with_empty_program_logs(tmp_path: Path) -> None:
    files = supervision.write_config({"triton": ProcessSpec(["true"])}, tmp_path, tmp_path)
    files.program_log("triton").write_text("an earlier run\n", encoding="utf-8")
    supervision.write_config({"triton": ProcessSpec(["true"])}, tmp_path, tmp_path)
    assert not files.program_log("triton").exists()


# Fails within a second while the marker file exists, then runs: a part whose cause is fixed.
_BROKEN = (
    "echo 'cannot bind 127.0.0.1:1234: Address already in use'; "
    'if [ -e "$MARKER" ]; then exit 3; fi; exec sleep 600'
)
# Gives up after three quick failed starts (the profiles' own policies take minutes).
_QUICK = RestartPolicy(priority=50, start_s=1, stop_wait_s=5, start_retries=2)


@pytest.fixture
def broken_and_sleeper(tmp_path: Path) -> Iterator[tuple[SupervisorFiles, Path, int]]:
    """supervisord running `broken` (failing while a marker exists) and a healthy `gateway`;
    yields its files, the marker and the gateway's pid."""
    marker = tmp_path / "broken.marker"
    marker.touch()
    files = supervision.write_config(
        {
            "broken": ProcessSpec(["sh", "-c", _BROKEN], {"MARKER": str(marker)}, _QUICK),
            "gateway": ProcessSpec([sys.executable, "-c", "import time; time.sleep(600)"]),
        },
        tmp_path,
        tmp_path,
    )
    supervisor = subprocess.Popen(
        supervision.supervisord_argv(files), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield files, marker, _wait_running(files, "gateway")
        assert supervisor.poll() is None  # a FATAL program stopped nothing else
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)


def _watching(
    files: SupervisorFiles, retry: FatalRetry
) -> tuple[list[str], threading.Event, threading.Thread]:
    reports: list[str] = []
    stopped = threading.Event()
    watcher = threading.Thread(
        target=supervision.watch_programs,
        args=(files, stopped, reports.append, retry, 0.1),
        daemon=True,
    )
    watcher.start()
    return reports, stopped, watcher


def _wait_for(reports: list[str], found: Callable[[list[str]], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not found(reports):
        assert time.monotonic() < deadline, reports
        time.sleep(0.1)


def test_a_fatal_program_is_reported_and_comes_back_once_fixed(
    broken_and_sleeper: tuple[SupervisorFiles, Path, int],
) -> None:
    files, marker, gateway = broken_and_sleeper
    reports, stopped, watcher = _watching(files, FatalRetry(after_s=2.0, rounds=3))
    try:
        _wait_for(reports, lambda r: any("broken is down" in m for m in r), 60)
        [report] = reports
        assert report.startswith("ERROR: broken is down"), report
        assert "FATAL; last exit: exit status 3" in report, report
        assert "cannot bind 127.0.0.1:1234: Address already in use" in report  # its log's end
        assert str(files.program_log("broken")) in report
        assert "started again in 2 s (round 1 of 3)" in report
        assert "gateway" not in report
        assert _info(files, "broken")["statename"] == "FATAL"
        assert _wait_running(files, "gateway") == gateway  # the rest keeps serving
        marker.unlink()  # the cause is fixed: the next round starts it for good
        _wait_for(reports, lambda r: "broken is running again." in r, 30)
        assert _info(files, "broken")["statename"] == "RUNNING"
        assert _wait_running(files, "gateway") == gateway
    finally:
        stopped.set()
        watcher.join(timeout=10)


def test_a_program_that_keeps_failing_is_started_again_a_bounded_number_of_times(
    broken_and_sleeper: tuple[SupervisorFiles, Path, int],
) -> None:
    files, _, gateway = broken_and_sleeper
    reports, stopped, watcher = _watching(files, FatalRetry(after_s=0.5, rounds=1))
    try:
        _wait_for(reports, lambda r: len(r) == 2, 60)
        assert "round 1 of 1" in reports[0]
        assert "Started again 1 times after a pause, it failed each time" in reports[1]
        assert "supervisorctl -c" in reports[1] and "start broken" in reports[1]
        attempts = files.program_log("broken").read_text(encoding="utf-8").count("cannot bind")
        assert attempts == 6  # two rounds of three starts
        time.sleep(2)  # well past the pause: it is not started again
        assert files.program_log("broken").read_text(encoding="utf-8").count("cannot bind") == 6
        assert len(reports) == 2
        assert _wait_running(files, "gateway") == gateway
    finally:
        stopped.set()
        watcher.join(timeout=10)


def test_last_exit_reads_supervisords_log(tmp_path: Path) -> None:
    files = SupervisorFiles.under(tmp_path)
    files.log.write_text(
        "INFO spawned: 'triton' with pid 7\n"
        "WARN exited: triton (exit status 1; not expected)\n"
        "WARN exited: triton2 (exit status 9; not expected)\n"
        "INFO spawned: 'triton' with pid 8\n"
        "WARN exited: triton (terminated by SIGKILL; not expected)\n",
        encoding="utf-8",
    )
    quick = {"name": "triton", "spawnerr": "Exited too quickly (process log may have details)"}
    assert supervision.last_exit(files, quick) == "terminated by SIGKILL"
    missing = {"name": "nginx", "spawnerr": "can't find command 'nginx'"}
    assert supervision.last_exit(files, missing) == "not started: can't find command 'nginx'"
    assert supervision.last_exit(files, {"name": "redis", "exitstatus": 0}) == "unknown"
