# syntax=docker/dockerfile:1.7
# Triton Inference Server with the production model repository (ensembles ranker_v2,
# ranker_v3; `backend: "onnxruntime"`), produced by `make models` in build/triton/production/.
# The default command serves config.pbtxt (KIND_CPU); on a GPU add --model-config-name=gpu for
# each model's configs/gpu.pbtxt (KIND_GPU, TensorRT), as the Helm chart does for triton.device=gpu.
#
#   make models
#   docker build -f infra/docker/triton.Dockerfile -t recsys/triton:dev .
#   # model repository only (for the Helm chart's initContainer, triton.modelRepository.source=image):
#   docker build -f infra/docker/triton.Dockerfile --target model-repository -t recsys/triton-models:dev .

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3

# A small image that only carries the model repository (busybox provides `cp`).
FROM busybox:1.37.0 AS model-repository
COPY build/triton/production/ /models/
USER 1000:1000

FROM ${TRITON_IMAGE} AS server
COPY --from=model-repository --chown=1000:1000 /models/ /models/
# triton-server (uid 1000) is the non-root user of the NGC image.
USER 1000:1000
# HTTP/REST, gRPC, Prometheus metrics.
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0"]
