"""Process launchers for this machine, none of which runs in production:

- `runner` and `supervision`: `make run` and `make stack` under supervisord, and
  `call_examples`, the commands the runner prints once the service answers;
- `tritonserver`: the nvidia-pytriton wheel's `tritonserver`, started the way it works here;
- `store_servers`: throwaway Redis and Postgres for tests and benchmarks;
- `ports`, `logs`, `health`, `processes`: free ports, log tails, readiness polling and stopping
  a process group, shared by all of them and by the tests and benchmarks that start servers.

The service (gateway, feature_service, triton_models, ab) never imports this package; the
wheel (pyproject's hatch packages) and the Docker images leave it out.
"""
