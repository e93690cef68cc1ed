"""The embedded profile's leader lease: an exclusive flock that dies with its process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from ab.leader import FileLease

REPO = Path(__file__).resolve().parents[3]

_HOLD = """
import asyncio, sys, time
from pathlib import Path
from ab.leader import FileLease
lease = FileLease(Path(sys.argv[1]))  # kept: the lock lives as long as its file is open
assert asyncio.run(lease.hold())
print("held", flush=True)
time.sleep(60)
"""


async def test_one_holder_at_a_time_and_release_hands_it_on(tmp_path: Path) -> None:
    path = tmp_path / "state.json.leader"
    first, second = FileLease(path), FileLease(path)
    assert await first.hold()
    assert await first.hold()  # still ours
    assert not await second.hold()
    await first.release()
    assert await second.hold()
    assert not await first.hold()
    await second.release()
    await second.release()  # twice is harmless


async def test_a_killed_holder_frees_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "state.json.leader"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD, str(path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        lease = FileLease(path)
        assert not await lease.hold()
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), 10)
        assert await lease.hold()  # the kernel dropped the dead process's lock
        await lease.release()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
