"""The README's quality block is rendered from an evaluation report, between its markers."""

from __future__ import annotations

from typing import Any

import pytest

from triton_models.readme_table import END, START, render


def _report() -> dict[str, Any]:
    m = {"recall@10": 0.5, "hr@10": 0.25, "ndcg@10": 0.125}
    segment = {
        "overall": m,
        "reorder": m,
        "discovery": m,
        "own_item_share@10": 0.75,
        "coverage@10": 0.1,
    }
    return {
        "segments": {"DISCOVER": segment, "not shown": segment},
        "discovery_targets": {"DISCOVER beats popularity": True, "MIXED HR": False},
    }


def test_block_between_markers_is_replaced() -> None:
    readme = f"intro\n{START}\nold table\n{END}\nrest\n"
    out = render(readme, _report())
    lines = out.split("\n")
    assert lines[:2] == ["intro", START] and lines[-3:] == [END, "rest", ""]
    assert "old table" not in out and "not shown" not in out
    assert "| DISCOVER | 0.5000 | 0.5000 | 0.250 | 0.1250 | 0.5000 | 0.250 | 0.1250 | 75.0% " in out
    assert "- met: DISCOVER beats popularity" in out and "- missed: MIXED HR" in out
    assert render(out, _report()) == out  # idempotent


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        render("no markers here", _report())
