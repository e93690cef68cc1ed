"""The end of a started server's log, for the messages that say why it did not start."""

from __future__ import annotations

from pathlib import Path


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of the log at `path`; "(no log)" when there is none (yet)."""
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
