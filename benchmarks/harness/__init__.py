"""What every benchmark shares: starting and watching what is measured, driving it, and
writing reports. The benchmarks themselves are the scripts one level up (`benchmarks/*.py`),
each writing the figures of one report in `benchmarks/results/`; `benchmarks/run_all.py` is
the `make bench` entry point. Modules:

- `procs`: starts and stops what is measured (gateway, Triton, the stack, the echo server),
  waits for health (through infra/local/health.py), reads RSS and CPU time from /proc.
- `loops`: the closed loop of concurrent async callers the in-process benchmarks drive with.
- `stats`: latency summaries, top-K overlap, /proc smaps parsing.
- `report`: machine description, versions, target checks, JSON and Markdown reports.
- `ghz`: builds ghz command lines, runs ghz, parses its JSON report.
- `target`: the gRPC target and its transport (plaintext, TLS, bearer token).
- `data`: the request data file drawn from real users of the data set.
- `triton_driver`: drives Triton alone with ghz and reads its statistics.
- `scenarios`: the load scenarios (sweep, rate, spike, soak, ceilings, batching) and the
  py-spy profile of a gateway under load.
- `capacity`: cores, replicas and cost arithmetic.
- `chaos`: faults under load against the supervised local profiles.
- `profiling`: py-spy recording and where the time goes.
"""
