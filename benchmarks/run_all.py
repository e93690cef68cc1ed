"""`make bench`: every load scenario with default durations, then the serving-cost figures
(benchmarks/serving_cost.py: CPU per call by process against the echo server, 1 and 2 gateway
processes), then the surfaces through the gRPC API on the test period
(benchmarks/surfaces_api.py: the discovery table of the served lists), then the chaos soak
(benchmarks/chaos_soak.py: the stack at 70% of its sustainable rate for 10 minutes with Triton,
Redis, Postgres and a gateway killed at random moments), then where the reports went.

Defaults keep the whole run under about 45 minutes on a 2-core machine (sweep 5 x 15 s,
rate steps up to 7 x 15 s, spike 75 s, soak 10 minutes, ceilings, the batching study with 8
Triton variants, the chaos soak's 10 minutes plus the stack's start). `--quick` is a short
smoke run (a 1-minute chaos soak); other options pass through to
benchmarks/ghz_scenarios.py (`--soak-seconds 600`, `--stack`, `--no-profile`, ...).

    python -m benchmarks.run_all [--quick] [--soak-seconds N] [--stack]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from benchmarks import chaos_soak, ghz_scenarios, serving_cost, surfaces_api


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = ghz_scenarios.build_parser()
    parser.prog = "run_all"
    parser.description = __doc__
    options = ghz_scenarios.parse_args(parser, args)
    started = time.monotonic()
    json_path, md_path = ghz_scenarios.run(options)
    print(md_path.read_text(encoding="utf-8"))
    if options.target:  # serving cost counts CPU by local process: nothing to count remotely
        print(f"benchmarks finished; report: {json_path}, summary: {md_path}")
        return 0
    cost_args = ["--seconds", "3", "--warmup", "1"] if options.quick else []
    cost_json, cost_md = serving_cost.run(serving_cost.build_parser().parse_args(cost_args))
    print(cost_md.read_text(encoding="utf-8"))
    surfaces_md = surfaces_api.run(surfaces_api.build_parser().parse_args([]))
    print(surfaces_md.read_text(encoding="utf-8"))
    chaos_args = ["--minutes", "1", "--probe-seconds", "10"] if options.quick else []
    chaos_json = chaos_soak.run(
        chaos_soak.build_parser().parse_args(chaos_args),
        " ".join(["python -m benchmarks.chaos_soak", *chaos_args]),
    )
    print(chaos_json.with_suffix(".md").read_text(encoding="utf-8"))
    minutes = (time.monotonic() - started) / 60
    print(f"benchmarks finished in {minutes:.1f} min")
    print(f"  report:  {json_path}")
    print(f"  summary: {md_path}")
    print(f"  serving cost: {cost_md} ({cost_json.name})")
    print(f"  surfaces through the API: {surfaces_md}")
    print(f"  chaos soak: {chaos_json.with_suffix('.md')} ({chaos_json.name})")
    print("  README table: python -m benchmarks.render_readme_table --readme README.md")
    return 0


if __name__ == "__main__":
    os.chdir(ghz_scenarios.REPO)
    sys.exit(main())
