"""Load benchmarks of the Recommend RPC: ghz scenarios, ceilings, batching study, reports.

`benchmarks/ghz_scenarios.py` runs one scenario or all of them; `benchmarks/run_all.py` is the
`make bench` entry point. Modules:

- `ghz`: builds ghz command lines, runs ghz, parses its JSON report.
- `data`: the request data file drawn from real users of the data set.
- `procs`: starts and stops what is measured (gateway, Triton, the stack, the echo server),
  waits for health, reads RSS and CPU time from /proc.
- `triton_driver`: drives Triton alone with an async tritonclient and reads its statistics.
- `scenarios`: the scenarios themselves.
- `capacity`: cores, replicas and cost arithmetic.
- `report`: machine description, versions, target checks, JSON and Markdown reports.
- `profiling`: py-spy against the gateway under load, and where its time goes.
"""
