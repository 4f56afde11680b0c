# The VideoPipeline operator (kopf). Build with `make images` (it stages a small context: these
# sources plus a wheelhouse made on the host, and builds without network):
#   python -m framescale.local.images build operator

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
# The runtime stage's base: the same by default; make images gives the Debian base's slimmer twin.
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheelhouse \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY wheelhouse /wheelhouse
RUN python3 -m venv /opt/framescale \
    && /opt/framescale/bin/pip install --no-compile --only-binary=:all: -r /wheelhouse/requirements.txt
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
RUN /opt/framescale/bin/pip install --no-compile --no-deps ".[operator]" \
    && /opt/framescale/bin/python -c "import framescale_operator.settings, kopf" \
    && /opt/framescale/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/framescale -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${RUNTIME_IMAGE}
COPY --from=build /opt/framescale /opt/framescale
ENV PATH=/opt/framescale/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
# 8080: liveness (/healthz); 9090: Prometheus (/metrics).
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "framescale_operator"]
# Last, so that a new revision re-labels the image without rebuilding a layer.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="framescale-operator" \
      org.opencontainers.image.description="framescale VideoPipeline operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
