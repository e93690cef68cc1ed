"""A/A simulation of the experiment statistics engine, larger than the unit test's.

Measures the false-positive rate of the fixed-horizon Welch test (one look), of the same test
applied at every look ("naive peeking"), and of the sequential confidence-sequence test at
every look, for a few sequential tuning values.  Writes JSON with the settings, the machine
and the wall time to ``benchmarks/results/ab_simulation.json``.

    uv run python benchmarks/ab_simulation.py --experiments 20000 --looks 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from ab.simulation import simulate_aa

RESULTS = Path(__file__).resolve().parent / "results" / "ab_simulation.json"


def main() -> None:
    """Run the simulation for each tuning value and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=20_000)
    parser.add_argument("--users-per-arm", type=int, default=1_000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tuning", type=float, nargs="+", default=[1_000.0, 2_000.0, 5_000.0])
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    runs = []
    for tuning in args.tuning:
        start = time.perf_counter()
        result = simulate_aa(
            experiments=args.experiments,
            users_per_arm=args.users_per_arm,
            looks=args.looks,
            alpha=args.alpha,
            sequential_tuning=tuning,
            seed=args.seed,
        )
        runs.append({**dataclasses.asdict(result), "wall_seconds": time.perf_counter() - start})
        print(json.dumps(runs[-1]))

    report = {
        "benchmark": "ab_simulation",
        "description": "A/A false-positive rates: fixed horizon, naive peeking, sequential",
        "metric": "per-user exponential(1) values in both arms (no true effect)",
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
