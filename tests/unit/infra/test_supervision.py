"""supervisord's configuration for the runner's profiles: every process restarted, ordered
start and stop, environment passed without supervisord's lossy parser; and a real supervisord
restarting a killed program while its sibling keeps running."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

import pytest
from supervisor.xmlrpc import SupervisorTransport

from infra.local import supervision
from infra.local.supervision import ProcessSpec, SupervisorFiles


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
    config = _parsed(
        supervision.supervisord_config(processes, SupervisorFiles.under(tmp_path), tmp_path)
    )
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
        assert config.get(section, "stdout_logfile") == "/dev/stdout"
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
