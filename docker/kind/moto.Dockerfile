# moto in server mode: the AWS endpoint (SQS, S3, SNS, EC2, Auto Scaling) of the kind path.
# Test infrastructure only. Its version (framescale.local.images MOTO_REQUIREMENT) matches the
# project's dev dependency. Build with `make images` (a staged context with a wheelhouse):
#   python -m framescale.local.images build moto

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
# The runtime stage's base: the same by default; make images gives the Debian base's slimmer twin.
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheelhouse
COPY wheelhouse /wheelhouse
RUN python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-compile --only-binary=:all: -r /wheelhouse/requirements.txt \
    && /opt/moto/bin/pip uninstall --yes --quiet pip setuptools

FROM ${RUNTIME_IMAGE}
COPY --from=build /opt/moto /opt/moto
ENV PATH=/opt/moto/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["moto_server", "--host", "0.0.0.0", "--port", "5000"]
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="framescale-moto" \
      org.opencontainers.image.description="moto server, the AWS endpoint of framescale's kind path (test infrastructure)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
