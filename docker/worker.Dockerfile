# syntax=docker/dockerfile:1.7
# The frame-extracting worker: SQS -> S3 -> OpenCV -> gRPC to TF Serving on localhost.
# No TensorFlow inside: the core install only (boto3, grpcio, protobuf, numpy, OpenCV headless,
# pydantic, prometheus-client, kubernetes). Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t framescale/worker:dev .

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
# A virtualenv is one folder to copy into the runtime stage, without pip's build tooling.
RUN python -m venv /opt/framescale \
    && /opt/framescale/bin/pip install --no-compile . \
    && /opt/framescale/bin/python -c "import framescale.worker.service, cv2, grpc" \
    && ! /opt/framescale/bin/python -c "import tensorflow" 2>/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="framescale-worker" \
      org.opencontainers.image.description="framescale frame-extracting worker (no TensorFlow)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/framescale /opt/framescale
ENV PATH=/opt/framescale/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    FRAMESCALE_WORKER_WORK_DIR=/tmp/framescale
# uid/gid 65532 (no passwd entry needed); the chart runs it with a read-only root filesystem
# and mounts emptyDirs for /tmp and the scratch folder.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["python", "-m", "framescale.worker"]
