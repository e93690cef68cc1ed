"""Run the real Triton Inference Server that ships in the ``nvidia-pytriton`` wheel.

The wheel's ``tritonserver`` binary runs on a CPU-only machine, but only when started the way
this module starts it:

- ``LD_LIBRARY_PATH`` holds the wheel's ``nvidia_pytriton.libs`` (libtritonserver and friends)
  and, first, the directory of this interpreter's ``libpython3.X.so``, so the Python-backend
  stub embeds the same CPython build as our virtualenv rather than the system one.
- ``--backend-directory`` points at a copy of the wheel's ``tritonserver/backends`` in which the
  Python-backend stub for the running Python version (``python_backend_stubs/3.X/...``) sits
  next to ``libtriton_python.so``. The copy lives in a project-local build folder, is refreshed
  idempotently and leaves site-packages untouched.
- ``PATH`` starts with this interpreter's ``bin`` directory. The stub embeds CPython with the
  default program name ``python3``; CPython resolves that through ``PATH``, finds the
  virtualenv's ``python3`` and its ``pyvenv.cfg``, and so puts the virtualenv's site-packages
  (numpy, onnxruntime, the project itself via its ``.pth`` file) on ``sys.path`` of every
  Python model. ``PYTHONPATH`` would miss the ``.pth`` processing; this is also how pytriton
  itself makes its stubs see the caller's environment.

Three ways in: :func:`tritonserver_command` returns the exact argv and environment (for
Procfiles and docs), ``python -m infra.local.tritonserver --model-repository PATH`` execs the
server (for process supervisors: `make run`, `make stack`), and :class:`TritonServer` starts,
waits for and stops one (for tests and benchmarks). Production runs the NGC Triton image
instead (infra/docker/triton.Dockerfile), so none of this is part of the service.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from infra.local.health import http_ok
from infra.local.logs import log_tail
from infra.local.ports import free_ports
from infra.local.processes import stop_process_group

ModelControlMode = Literal["none", "poll", "explicit"]
"""How Triton picks up models: all at start (none), by polling the repository, or on request."""

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
_STUB_NAME = "triton_python_backend_stub"
# Files of the wheel's Python backend copied into our backend directory, next to the stub.
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
# The repository root when the project is checked out (editable install): build/ is git-ignored.
_DEFAULT_BACKEND_ROOT = Path(__file__).resolve().parents[2] / "build" / "tritonserver"


class TritonServerError(RuntimeError):
    """The server cannot be prepared, did not become ready, or died."""


class TritonServerNotFoundError(TritonServerError):
    """The ``nvidia-pytriton`` wheel, which carries the ``tritonserver`` binary, is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of the wheel's Triton live on disk."""

    root: Path
    """The wheel's ``pytriton/tritonserver`` directory."""
    binary: Path
    """The ``tritonserver`` executable."""
    libs: Path
    """Shared libraries the binary and the backends link against (``nvidia_pytriton.libs``)."""
    backends: Path
    """The wheel's backend directory (only ``python`` in this wheel)."""
    caches: Path
    """Response-cache implementations (``--cache-directory``)."""

    def python_stub(self, python_version: str = _PYTHON_VERSION) -> Path:
        """The Python-backend stub built for ``python_version`` ("3.11")."""
        return self.root / "python_backend_stubs" / python_version / _STUB_NAME


def locate_distribution() -> TritonDistribution:
    """Find the ``tritonserver`` that the installed ``nvidia-pytriton`` wheel ships.

    Only the package's location is looked up; ``pytriton`` itself is not imported.

    Raises:
        TritonServerNotFoundError: the wheel is not installed or lacks the binary.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerNotFoundError(
            "the nvidia-pytriton wheel is not installed; it carries the tritonserver binary "
            "(install the project's 'triton' extra)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    # A wheel install keeps the bundled libraries beside the package (auditwheel layout);
    # an editable install of pytriton keeps them inside.
    libs = package.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = root / "external_libs"
    distribution = TritonDistribution(
        root=root,
        binary=root / "bin" / "tritonserver",
        libs=libs,
        backends=root / "backends",
        caches=root / "caches",
    )
    missing = [
        path
        for path in (distribution.binary, distribution.libs, distribution.backends / "python")
        if not path.exists()
    ]
    if missing:
        raise TritonServerNotFoundError(
            f"the nvidia-pytriton wheel at {package} is incomplete; missing: "
            + ", ".join(str(path) for path in missing)
        )
    return distribution


def _copy_if_changed(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` unless it is already there, atomically.

    Several processes (test workers, the runner) may prepare the same directory at once, so the
    copy goes to a temporary name and is renamed into place.
    """
    if target.exists():
        stat_source, stat_target = source.stat(), target.stat()
        if stat_source.st_size == stat_target.st_size and stat_source.st_mtime_ns == (
            stat_target.st_mtime_ns
        ):
            return
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(source, temporary)  # keeps mode (the stub is executable) and mtime
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def prepare_backend_directory(
    backend_root: Path | None = None,
    *,
    distribution: TritonDistribution | None = None,
    python_version: str = _PYTHON_VERSION,
) -> Path:
    """Lay out a ``--backend-directory`` whose Python backend has the stub for this Python.

    The wheel keeps one stub per Python version apart from ``libtriton_python.so``, and the
    backend looks for the stub next to itself. Rather than writing into site-packages, the
    backend files and the right stub are copied to ``backend_root/py3.X/backends/python``.
    Idempotent: unchanged files are not copied again.

    Args:
        backend_root: folder for the prepared copies; defaults to ``build/tritonserver`` in the
            repository root.
        distribution: the wheel's Triton; located when omitted.
        python_version: "3.11"-style version whose stub is wanted.

    Returns:
        The directory to pass as ``--backend-directory``.

    Raises:
        TritonServerNotFoundError: the wheel, or its stub for ``python_version``, is missing.
    """
    distribution = distribution or locate_distribution()
    stub = distribution.python_stub(python_version)
    if not stub.is_file():
        raise TritonServerNotFoundError(
            f"the nvidia-pytriton wheel has no Python-backend stub for Python {python_version} "
            f"(looked for {stub})"
        )
    backends = (backend_root or _DEFAULT_BACKEND_ROOT) / f"py{python_version}" / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for name in _PYTHON_BACKEND_FILES:
        _copy_if_changed(distribution.backends / "python" / name, python_backend / name)
    _copy_if_changed(stub, python_backend / _STUB_NAME)
    return backends


@dataclass(frozen=True)
class TritonServerOptions:
    """Everything that decides how one ``tritonserver`` runs."""

    model_repository: Path
    """The model repository (``--model-repository``)."""
    http_port: int = DEFAULT_HTTP_PORT
    """HTTP/REST endpoint port; also used for the readiness check."""
    grpc_port: int = DEFAULT_GRPC_PORT
    """gRPC endpoint port (the gateway's channel)."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Prometheus metrics port."""
    address: str = "127.0.0.1"
    """Address all three endpoints bind to; ``0.0.0.0`` to serve other hosts."""
    model_control_mode: ModelControlMode = "none"
    """none: load everything at start; poll: follow repository changes; explicit: load API."""
    repository_poll_secs: int = 5
    """Polling interval in seconds when ``model_control_mode`` is ``poll``."""
    load_models: tuple[str, ...] = ()
    """Models loaded at start in explicit mode (``*`` for all of them)."""
    strict_readiness: bool = True
    """Ready only when every model is ready (``--strict-readiness``)."""
    exit_on_error: bool = True
    """Exit at start when a model fails to load, instead of serving the others."""
    log_verbose: int = 0
    """Triton's ``--log-verbose`` level; 0 is quiet, 1 logs each model and request step."""
    exit_timeout_secs: int = 10
    """How long Triton waits for in-flight requests when asked to stop."""
    backend_root: Path | None = None
    """Where the prepared backend directory lives; ``build/tritonserver`` by default."""
    shm_region_prefix: str | None = None
    """Prefix of the Python backend's /dev/shm regions; a unique one is made when omitted, so
    several servers on one machine do not share regions."""
    extra_args: tuple[str, ...] = ()
    """Further ``tritonserver`` flags, appended verbatim."""

    def __post_init__(self) -> None:
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(f"unknown model_control_mode {self.model_control_mode!r}")
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit'")
        if self.repository_poll_secs < 1:
            raise ValueError("repository_poll_secs must be at least 1")

    def with_free_ports(self) -> TritonServerOptions:
        """A copy on three distinct ports that are free now (for tests running side by side)."""
        http, grpc, metrics = free_ports(3, self.address)
        return dataclasses.replace(
            self,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
        )


@dataclass(frozen=True)
class TritonCommand:
    """The argv and the full environment that start one ``tritonserver``."""

    argv: tuple[str, ...]
    """Executable first, then the flags."""
    env: Mapping[str, str]
    """The complete process environment (the base environment plus what Triton needs)."""
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    """Only the variables this module sets; what a Procfile or doc needs to add."""
    shm_region_prefix: str = ""
    """Name prefix of the Python backend's shared-memory regions under /dev/shm."""

    def shell(self) -> str:
        """The command as one shell line, ``env K=V ... tritonserver --flags``."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env_overrides.items()]
        return " ".join(["env", *assignments, shlex.join(self.argv)])


def _prepend_path(value: str, existing: str | None) -> str:
    parts = [value, *(existing or "").split(os.pathsep)]
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:
            seen.append(part)
    return os.pathsep.join(seen)


def _libpython_directory() -> str | None:
    """The directory holding this interpreter's shared libpython, when it has one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if isinstance(libdir, str) and isinstance(soname, str) and (Path(libdir) / soname).exists():
        return libdir
    return None


def tritonserver_command(
    options: TritonServerOptions,
    *,
    base_env: Mapping[str, str] | None = None,
    distribution: TritonDistribution | None = None,
) -> TritonCommand:
    """Build the command line and environment that run ``tritonserver`` here.

    Prepares the backend directory on the way (idempotent, see
    :func:`prepare_backend_directory`).

    Args:
        options: ports, repository, control mode and logging.
        base_env: environment to extend; the current process's when omitted.
        distribution: the wheel's Triton; located when omitted.

    Returns:
        The argv and environment; run them as they are.
    """
    distribution = distribution or locate_distribution()
    backend_directory = prepare_backend_directory(options.backend_root, distribution=distribution)
    shm_prefix = options.shm_region_prefix or f"recsys_triton_{os.getpid()}_{secrets.token_hex(4)}"
    argv = [
        str(distribution.binary),
        f"--model-repository={options.model_repository.resolve()}",
        f"--backend-directory={backend_directory.resolve()}",
        f"--cache-directory={distribution.caches}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--http-address={options.address}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.address}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={options.address}",
        f"--metrics-port={options.metrics_port}",
        # There is no GPU and no DCGM here; asking for GPU metrics only adds start-up noise.
        "--allow-gpu-metrics=false",
        f"--model-control-mode={options.model_control_mode}",
        f"--strict-readiness={str(options.strict_readiness).lower()}",
        f"--exit-on-error={str(options.exit_on_error).lower()}",
        f"--exit-timeout-secs={options.exit_timeout_secs}",
        f"--log-verbose={options.log_verbose}",
    ]
    if options.model_control_mode == "poll":
        argv.append(f"--repository-poll-secs={options.repository_poll_secs}")
    argv.extend(f"--load-model={name}" for name in options.load_models)
    argv.extend(options.extra_args)

    base = dict(os.environ if base_env is None else base_env)
    library_path = _prepend_path(str(distribution.libs), base.get("LD_LIBRARY_PATH"))
    libpython = _libpython_directory()
    if libpython is not None:
        library_path = _prepend_path(libpython, library_path)
    overrides = {
        "LD_LIBRARY_PATH": library_path,
        # The stub's embedded CPython finds "python3" on PATH and, through the virtualenv's
        # pyvenv.cfg next to it, the virtualenv's site-packages (see the module docstring).
        "PATH": _prepend_path(str(Path(sys.executable).parent), base.get("PATH")),
    }
    return TritonCommand(
        argv=tuple(argv),
        env={**base, **overrides},
        env_overrides=overrides,
        shm_region_prefix=shm_prefix,
    )


class TritonServer:
    """One ``tritonserver`` process: start, wait until ready, stop.

    Use as a context manager::

        with TritonServer(TritonServerOptions(repo).with_free_ports()) as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)

    Its output goes to ``log_path`` (a temporary file when omitted), whose tail is part of every
    start-up error.
    """

    def __init__(
        self,
        options: TritonServerOptions,
        *,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.startup_timeout_s = startup_timeout_s
        self._base_env = base_env
        self._log_path = log_path
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._command: TritonCommand | None = None
        self._stopped = False

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as tritonclient.http expects it."""
        return f"{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as tritonclient.grpc expects it."""
        return f"{self._client_host}:{self.options.grpc_port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.options.address in ("0.0.0.0", "") else self.options.address

    @property
    def log_path(self) -> Path | None:
        """Where the server's output goes (known once started)."""
        return self._log_path

    @property
    def command(self) -> TritonCommand | None:
        """The command the server was started with (known once started)."""
        return self._command

    @property
    def pid(self) -> int | None:
        """Process id of the running server."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines the server wrote."""
        return log_tail(self._log_path, lines)

    def start(self) -> None:
        """Start the process and wait until ``/v2/health/ready`` answers 200.

        Raises:
            TritonServerError: the server exited or did not become ready within
                ``startup_timeout_s``; the message holds the log's tail. The process is stopped.
        """
        if self._process is not None:
            raise TritonServerError("this TritonServer was already started")
        command = tritonserver_command(self.options, base_env=self._base_env)
        self._command = command
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self._log_path.open("wb")
        self._process = subprocess.Popen(
            command.argv,
            env=dict(command.env),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group, so a stop can reach the Python-backend stubs too.
            start_new_session=True,
        )
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200.

        Raises:
            TritonServerError: the process exited, or ``timeout_s`` passed.
        """
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise TritonServerError(
                    f"tritonserver exited with code {code} before becoming ready\n"
                    f"{self._describe()}"
                )
            if http_ok(url, timeout_s=2.0):
                return
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"tritonserver did not become ready within {timeout_s:.0f} s ({url})\n"
                    f"{self._describe()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _describe(self) -> str:
        shell = self._command.shell() if self._command is not None else "?"
        return f"command: {shell}\nlog: {self._log_path}\n--- log tail ---\n{self.log_tail()}"

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL to its process group after ``timeout_s``.

        ``timeout_s`` defaults to Triton's own exit timeout plus a margin. Safe to call twice.

        Returns:
            The exit code, or None when it was never started.
        """
        process = self._process
        if process is None:
            return None
        if self._stopped:
            return process.returncode
        if timeout_s is None:
            timeout_s = self.options.exit_timeout_secs + 5.0
        try:
            # A server that had to be killed leaves its Python-backend stubs behind: the whole
            # group goes.
            code = stop_process_group(process, signal.SIGTERM, timeout_s)
            self._remove_shared_memory()
            return code
        finally:
            self._stopped = process.poll() is not None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _remove_shared_memory(self) -> None:
        """Delete the /dev/shm regions a killed server could not (the prefix is ours alone)."""
        prefix = self._command.shm_region_prefix if self._command is not None else ""
        if not prefix:
            return
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.tritonserver",
        description="Exec the nvidia-pytriton wheel's tritonserver with the environment it needs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument(
        "--model-control-mode", choices=("none", "poll", "explicit"), default="none"
    )
    parser.add_argument("--repository-poll-secs", type=int, default=5)
    parser.add_argument(
        "--load-model", action="append", default=[], help="explicit mode; repeatable; '*' = all"
    )
    parser.add_argument("--strict-readiness", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--exit-on-error", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--exit-timeout-secs", type=int, default=10)
    parser.add_argument("--backend-root", type=Path, default=None)
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="print the command as a shell line instead of running it",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Exec ``tritonserver`` (or print its command); for Procfiles and process supervisors."""
    args = _parse_args(argv)
    options = TritonServerOptions(
        model_repository=args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        address=args.address,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model),
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        log_verbose=args.log_verbose,
        exit_timeout_secs=args.exit_timeout_secs,
        backend_root=args.backend_root,
    )
    command = tritonserver_command(options)
    if args.print_command:
        print(command.shell())
        return 0
    sys.stdout.flush()
    # exec: the supervisor's signals reach tritonserver itself, with no Python in between.
    os.execve(command.argv[0], list(command.argv), dict(command.env))


if __name__ == "__main__":
    sys.exit(main())
