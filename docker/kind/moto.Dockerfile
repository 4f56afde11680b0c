# syntax=docker/dockerfile:1.7
# moto in server mode: the AWS endpoint (SQS, S3, SNS, EC2, Auto Scaling) of the kind path.
# Test infrastructure only. The version matches the project's dev dependency (moto[server]>=5.2).
#   docker build -f docker/kind/moto.Dockerfile -t framescale/moto:dev docker/kind

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-compile "moto[server]==5.2.5"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/moto /opt/moto
ENV PATH=/opt/moto/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["moto_server", "--host", "0.0.0.0", "--port", "5000"]
