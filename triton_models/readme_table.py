"""Rewrites the README's offline quality table from ``build/reports/evaluation.json``.

``python -m triton_models.readme_table [--report build/reports/evaluation.json] [--readme
README.md]`` replaces the lines between ``<!-- quality-table:start -->`` and
``<!-- quality-table:end -->`` with the report's lists scored overall, on re-orders and on
products new to the customer (:func:`triton_models.evaluate.segment_table`), and the discovery
targets, so the README quotes the last full build and nothing else.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from triton_models.evaluate import segment_table

START = "<!-- quality-table:start -->"
END = "<!-- quality-table:end -->"
LISTS = (
    "popularity",
    "repeat_purchase",
    "retrieval_only",
    "popularity_skip_own",
    "item_to_item",
    "ranker_v2_int8",
    "ranker_v3_int8",
    "ranker_v2_int8 own items masked",
    "discovery_v1_int8",
    "BUY_AGAIN",
    "DISCOVER",
    "MIXED",
    "MIXED (1 discovery slots)",
    "MIXED (2 discovery slots)",
    "MIXED (3 discovery slots)",
    "MIXED (4 discovery slots)",
    "MIXED (5 discovery slots)",
)
"""The lists the README shows, in this order (FP32 twins and the rest stay in the report)."""


def table(report: Mapping[str, Any]) -> list[str]:
    """The README block: the segment table and the discovery targets."""
    segments = report["segments"]
    lines = segment_table({name: segments[name] for name in LISTS if name in segments})
    lines += ["", "Discovery targets (offline, `discovery_targets` in the report):", ""]
    lines += [
        f"- {'met' if met else 'missed'}: {target}"
        for target, met in report["discovery_targets"].items()
    ]
    return lines


def render(readme: str, report: Mapping[str, Any]) -> str:
    """``readme`` with the block between the markers replaced.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    lines = readme.split("\n")
    try:
        start, end = lines.index(START), lines.index(END)
    except ValueError:
        raise ValueError(f"README lacks the {START} / {END} markers") from None
    if end < start:
        raise ValueError(f"{END} comes before {START}")
    return "\n".join([*lines[: start + 1], *table(report), *lines[end:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m triton_models.readme_table", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
    parser.add_argument("--report", type=Path, default=Path("build/reports/evaluation.json"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    args.readme.write_text(render(args.readme.read_text(), report))


if __name__ == "__main__":
    main()
