"""Operations around the service: deployment files (Helm, Docker, nginx, Prometheus) and, in
`infra.local`, the launchers that start real servers on this machine for `make run`,
`make stack`, tests and benchmarks. Not part of the service wheel or its images."""
