"""Process launchers for this machine, none of which runs in production:

- `runner` and `supervision`: `make run` and `make stack` under supervisord;
- `tritonserver`: the nvidia-pytriton wheel's `tritonserver`, started the way it works here;
- `store_servers`: throwaway Redis and Postgres for tests and benchmarks;
- `ports`, `logs`, `health`: free ports, log tails and readiness polling, shared by all of them
  and by the tests and benchmarks that start servers.

The service (gateway, feature_service, triton_models, ab) never imports this package; the
wheel (pyproject's hatch packages) and the Docker images leave it out.
"""
