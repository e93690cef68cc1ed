"""Start throwaway local `redis-server` and Postgres processes (tests and benchmarks).

Both use the Debian binaries, listen on 127.0.0.1 on a free port, keep their data in a private
temporary folder and are stopped (and the folder removed) by `stop()`. `restart()` keeps the
port (and, for Postgres, the data) so fault tests can take a server away and bring it back.

Postgres refuses to run as root: when this process is root, `initdb` and `postgres` run as the
`postgres` system user (`subprocess.Popen(user=...)`, no intermediate shell or `su`, so the pid
we hold is the server's), in a folder under the system temp dir chowned to that user.
"""

from __future__ import annotations

import abc
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from infra.local.logs import log_tail
from infra.local.ports import free_port
from infra.local.processes import stop_process_group

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_BIN = "redis-server"
STARTUP_TIMEOUT_S = 30.0


class LocalServerError(RuntimeError):
    """A server could not be prepared or did not become ready; the message has its log tail."""


class _Server(abc.ABC):
    """Shared start/stop plumbing; subclasses say how to launch and probe."""

    name = "server"

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port if port is not None else free_port()
        self.log_path = root / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the server accepts requests."""

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Starts the process and waits until it answers.

        Raises:
            LocalServerError: it exited or did not answer in time (message has the log tail).
        """
        if self.running:
            return
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
            **self._popen_kwargs(),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._ready():
                return
            time.sleep(0.05)
        code = self._process.poll()
        self.stop_process()
        state = f"exited with {code}" if code is not None else f"not ready in {timeout_s:.0f} s"
        raise LocalServerError(
            f"{self.name} on port {self.port} {state}; log {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop_process(self) -> None:
        """Stops the process, keeping its data folder (see `restart`)."""
        if self._process is not None:
            stop_process_group(self._process, self._stop_signal())
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Starts the server again on the same port after `stop_process`."""
        self.stop_process()
        self.start()

    def stop(self) -> None:
        """Stops the process and removes its folder."""
        self.stop_process()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        """The end of the server's log."""
        return log_tail(self.log_path)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Server):
    """`redis-server` without persistence: a restart starts empty, like a lost cache node."""

    name = "redis"

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        super().__init__(root or Path(tempfile.mkdtemp(prefix="recsys-redis-")), port)

    @property
    def url(self) -> str:
        """Connection URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            REDIS_BIN,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
        ]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PostgresServer(_Server):
    """A fresh Postgres cluster with a `recsys` superuser (trust auth) and database."""

    name = "postgres"
    user = "recsys"
    database = "recsys"

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        super().__init__(root or Path(tempfile.mkdtemp(prefix="recsys-pg-")), port)
        self._as_user: str | None = "postgres" if os.geteuid() == 0 else None
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self._initialised = False

    @property
    def dsn(self) -> str:
        """Connection string (no password: trust auth)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _popen_kwargs(self) -> dict[str, Any]:
        if self._as_user is None:
            return {}
        return {"user": self._as_user, "group": self._as_user, "extra_groups": []}

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(
            command, capture_output=True, timeout=120, check=False, **self._popen_kwargs()
        )
        if result.returncode != 0:
            raise LocalServerError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )

    def _initdb(self) -> None:
        if not (POSTGRES_BIN / "initdb").is_file():
            raise LocalServerError(f"{POSTGRES_BIN}/initdb not found: install postgresql-15")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_user is not None:
            entry = pwd.getpwnam(self._as_user)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                str(POSTGRES_BIN / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
            ]
        )
        if self._as_user is not None:
            # The log file is created by us (root) before the server starts.
            self.log_path.touch()
            entry = pwd.getpwnam(self._as_user)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        self._initialised = True

    def _command(self) -> list[str]:
        return [
            str(POSTGRES_BIN / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            # Throwaway data: durability off makes tests and benchmarks fast and quiet.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

    def _ready(self) -> bool:
        result = subprocess.run(
            [
                str(POSTGRES_BIN / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-t",
                "1",
            ],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Initialises the cluster on first start, starts it and creates the database."""
        if self.running:
            return
        first = not self._initialised
        if first:
            self._initdb()
        super().start(timeout_s)
        if first:
            self._run(
                [
                    str(POSTGRES_BIN / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    f"CREATE DATABASE {self.database}",
                ]
            )


_S = TypeVar("_S", bound=_Server)


def start_with_retry(server_type: Callable[[], _S]) -> _S:
    """Starts a server on a free port, once more on another port if the first was taken."""
    for attempt in range(2):
        server = server_type()
        try:
            server.start()
        except LocalServerError as exc:
            server.stop()
            if attempt == 0 and "in use" in str(exc).lower():
                continue
            raise
        return server
    raise AssertionError("unreachable")
