# syntax=docker/dockerfile:1.7
# recsys gateway image: the gateway (`recsys-gateway`) and the experiment sidecar
# (`python -m ab sidecar`) run from this one image.
#
#   docker build -f infra/docker/gateway.Dockerfile -t recsys/gateway:dev .
#
# Build context: the repository root (gateway.Dockerfile.dockerignore keeps it small).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# uv, pinned to the version that wrote uv.lock.
FROM ghcr.io/astral-sh/uv:0.9.30 AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (cached as long as the lock file does not change).
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed as a wheel (not editable): the final image needs no sources.
COPY protos/ protos/
COPY gateway/ gateway/
COPY feature_service/ feature_service/
COPY ab/ ab/
COPY triton_models/ triton_models/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="recsys-gateway" \
      org.opencontainers.image.description="recsys gRPC gateway and A/B experiment sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid recsys --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin recsys \
    && mkdir -p /etc/recsys /var/lib/recsys/spool \
    && chown -R recsys:recsys /var/lib/recsys
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/recsys
# gRPC API, gateway metrics, sidecar admin gRPC, sidecar metrics.
EXPOSE 50051 9464 50061 9465
# No HEALTHCHECK: Kubernetes probes the standard gRPC health service directly.
# SIGTERM starts the gateway's graceful drain; exec form so it reaches the process.
CMD ["recsys-gateway", "--config", "/etc/recsys/config.yaml"]
