"""Stopping a server started in a session of its own (`start_new_session=True`): it leads a
process group, so whatever it started (Triton's Python-backend stubs, supervisord's programs,
Postgres' backends) can be reached through the group when the server itself cannot clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process_group(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15.0
) -> int:
    """Sends `sig` to `process`, waits up to `timeout_s`, then SIGKILLs its process group; and
    SIGKILLs what of the group outlived it (a no-op after a clean exit, since the group exists
    only while a member lives). Returns the exit code. Safe on a process that already exited.
    """
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode
