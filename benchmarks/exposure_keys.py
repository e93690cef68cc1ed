"""What an exposure row costs to write as the table grows: random request ids (UUIDv4, what
the gateway generated before) against time-ordered ones (UUIDv7, what it generates now).

Exposures are keyed by (request id, experiment) in SQLite (the embedded profile) and in
Postgres. Every Recommend writes one row per running experiment, through `SqliteExposureSink`
(the gateway's own writer, used here as it is), in batches. With random ids each row lands
at a random leaf of the key's B-tree, so as the table outgrows SQLite's page cache more of
the tree is read and rewritten per insert; time-ordered ids append at the right edge.

For each table size, one file per id kind is filled to that size with the sink, then batches
of `--batch` requests (two experiments each, as `make run` serves) are written to the two
files in turn, round after round, so machine load hits both alike; the report gives the
median microseconds per row over rounds.

    python -m benchmarks.exposure_keys [--sizes 0 250000 1000000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from uuid_utils import uuid7

from ab.exposures import Exposure, SqliteExposureSink
from benchmarks.harness.report import RESULTS_DIR, machine_description, write_json_and_markdown

EXPERIMENTS = ("ranker_v2_vs_v3", "mixed_vs_buy_again")
ITEMS = tuple(str(85_000 + i) for i in range(10))
KINDS: dict[str, Callable[[], str]] = {
    "random (uuid4)": lambda: uuid.uuid4().hex,
    "time-ordered (uuid7)": lambda: uuid7().hex,
}


def _batch(new_id: Callable[[], str], requests: int, when: datetime) -> list[Exposure]:
    rows = []
    for _ in range(requests):
        request_id = new_id()
        for experiment in EXPERIMENTS:
            rows.append(
                Exposure(
                    request_id=request_id,
                    user_id="17850",
                    experiment=experiment,
                    variant="control",
                    model_version="ranker_v2/1",
                    item_ids=ITEMS,
                    timestamp=when,
                    assignment_probability=0.5,
                    new_item_ids=ITEMS[:3],
                )
            )
    return rows


async def _measure(size: int, rounds: int, batch: int, workdir: Path) -> dict[str, float]:
    sinks = {
        kind: await SqliteExposureSink.open(workdir / f"size{size}-{index}.sqlite")
        for index, kind in enumerate(KINDS)
    }
    when = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for kind, sink in sinks.items():
            for _ in range(size // 5_000):  # filled through the same writer, in large batches
                await sink.write(_batch(KINDS[kind], 2_500, when))
                when += timedelta(seconds=1)
        per_row: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(rounds):
            for kind, sink in sinks.items():
                rows = _batch(KINDS[kind], batch, when)
                started = time.perf_counter()
                await sink.write(rows)
                per_row[kind].append((time.perf_counter() - started) / len(rows) * 1e6)
            when += timedelta(milliseconds=500)
        return {kind: statistics.median(times) for kind, times in per_row.items()}
    finally:
        for sink in sinks.values():
            await sink.close()


def _markdown(report: dict[str, Any]) -> str:
    kinds = list(KINDS)
    lines = [
        f"# Exposure rows: write cost by key kind and table size ({report['when']})",
        "",
        f"Machine: {report['machine']['cpu_count']} CPUs ({report['machine']['cpu_model']}), "
        f"load average at start {report['machine']['load_average_at_start']}. "
        f"`SqliteExposureSink.write`, batches of {report['batch']} requests x "
        f"{len(EXPERIMENTS)} experiments, {report['rounds']} rounds alternating the two files; "
        "median microseconds per row.",
        "",
        "| rows already in the table | " + " | ".join(kinds) + " | random / ordered |",
        "|---:|" + "---:|" * (len(kinds) + 1),
    ]
    for size, medians in report["sizes"].items():
        ratio = medians[kinds[0]] / medians[kinds[1]]
        lines.append(
            f"| {int(size):,} | "
            + " | ".join(f"{medians[kind]:.1f}" for kind in kinds)
            + f" | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 250_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=250, help="requests per batch")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args(argv)
    stamp = datetime.now(UTC)
    out = options.out or RESULTS_DIR / f"exposure-keys-{stamp:%Y%m%dT%H%M%SZ}.json"
    report: dict[str, Any] = {
        "when": stamp.isoformat(timespec="seconds"),
        "machine": machine_description(),
        "rounds": options.rounds,
        "batch": options.batch,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="exposure-keys-") as tmp:
        for size in options.sizes:
            medians = asyncio.run(_measure(size, options.rounds, options.batch, Path(tmp)))
            report["sizes"][str(size)] = medians
            print(f"{size:>10,} rows: " + ", ".join(f"{k} {v:.1f} us" for k, v in medians.items()))
    markdown = _markdown(report)
    write_json_and_markdown(out, report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
