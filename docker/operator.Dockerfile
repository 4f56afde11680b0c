# syntax=docker/dockerfile:1.7
# The VideoPipeline operator (kopf). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t framescale/operator:dev .

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
RUN python -m venv /opt/framescale \
    && /opt/framescale/bin/pip install --no-compile ".[operator]" \
    && /opt/framescale/bin/python -c "import framescale_operator.settings, kopf"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="framescale-operator" \
      org.opencontainers.image.description="framescale VideoPipeline operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/framescale /opt/framescale
ENV PATH=/opt/framescale/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
# 8080: liveness (/healthz); 9090: Prometheus (/metrics).
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "framescale_operator"]
