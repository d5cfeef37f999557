# The edge client (`baf stream`) on a CPU, built with the project's own `make install`.
#   docker build -f deploy/docker/client.Dockerfile -t baf-client .
#   docker run --rm -v "$PWD/clips:/data" baf-client /data/clip.mp4 --server HOST:50051 --output /data/out.jsonl
# Build arguments: TORCH_INDEX (the CPU torch build; the PyPI one would pull CUDA), MODELS (as in server.Dockerfile).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG MODELS=deploy/docker/models

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++ and make build the native extension; ffmpeg (sources, hevc) comes from `make sysdeps` below.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/baf
COPY . .

RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX}" PIP_NO_CACHE_DIR=1 make install SYSDEPS=ffmpeg \
    && rm -rf /var/lib/apt/lists/* build

COPY ${MODELS} /models/

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/baf baf \
    && mkdir -p /data && chown baf:baf /data
USER 10001
WORKDIR /data

ENV PATH=/opt/baf/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# A client is a job, not a service: it has no health endpoint of its own (the server's is checked).
HEALTHCHECK NONE
ENTRYPOINT ["baf", "stream"]
