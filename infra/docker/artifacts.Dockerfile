# syntax=docker/dockerfile:1.7
# The gateway's build folder (config.model.artifacts_dir: data/, Annoy index, model repository
# configs) as a small image. The Helm chart's initContainer copies /artifacts into the pod
# (gateway.artifacts.source=image), so models and code are versioned and rolled separately.
#
#   make models
#   docker build -f infra/docker/artifacts.Dockerfile -t recsys/artifacts:dev .

FROM busybox:1.37.0
COPY build/ /artifacts/
USER 1000:1000
