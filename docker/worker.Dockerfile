# The frame-extracting worker: SQS -> S3 -> PyAV (FFmpeg) -> gRPC to TF Serving on localhost.
# No TensorFlow, no OpenCV, no operator, no local harness: the core dependencies and the modules
# the worker imports (framescale.local.images stages them). Build with `make images`: it stages a
# small context (these sources plus a wheelhouse made on the host) and builds without network,
#   python -m framescale.local.images build worker
# or by hand from a staged context:
#   docker build -f docker/worker.Dockerfile -t framescale/worker:dev <staged context>

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
# Dependencies first, from wheels only (the build needs no network and trusts no certificate):
# this layer stays cached while the sources change.
# What the dependencies bring that the worker never loads: the kubernetes client's asyncio copy
# (kubernetes/aio, 21 MB) and the aiohttp stack only it imports (the worker's Lease calls use the
# synchronous client), and botocore's models of the AWS services it does not call (24 MB;
# WORKER_AWS_SERVICES are S3, SQS and SNS, STS and SSO for the credential chain).
ARG WORKER_AWS_SERVICES="s3 sqs sns sts sso sso-oidc"
COPY wheelhouse /wheelhouse
RUN python3 -m venv /opt/framescale \
    && /opt/framescale/bin/pip install --no-compile --only-binary=:all: -r /wheelhouse/requirements.txt \
    && /opt/framescale/bin/pip uninstall --yes --quiet \
        aiohttp aiosignal aiohappyeyeballs frozenlist multidict yarl propcache attrs \
    && site="$(/opt/framescale/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "${site}/kubernetes/aio" \
    && for model in "${site}"/botocore/data/*/; do \
         case " ${WORKER_AWS_SERVICES} " in *" $(basename "${model}") "*) ;; *) rm -rf "${model}" ;; esac; \
       done
COPY pyproject.toml README.md ./
COPY services ./services
# The project itself, then what a runtime does not need: pip and setuptools (nothing installs at
# run time), test suites shipped inside packages, type stubs, caches.
RUN /opt/framescale/bin/pip install --no-compile --no-deps . \
    && /opt/framescale/bin/python -c "import framescale.worker.service, framescale.worker.lease, kubernetes.client, av, grpc" \
    && /opt/framescale/bin/python -c "import boto3; [boto3.client(s, region_name='us-east-1') for s in ('s3', 'sqs', 'sns', 'sts')]" \
    && ! /opt/framescale/bin/python -c "import tensorflow" 2>/dev/null \
    && ! /opt/framescale/bin/python -c "import cv2" 2>/dev/null \
    && ! /opt/framescale/bin/python -c "import framescale.local" 2>/dev/null \
    && /opt/framescale/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/framescale \( -name __pycache__ -o -name tests -o -name testing \) -type d -prune -exec rm -rf {} + \
    && find /opt/framescale \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' \) -delete

FROM ${RUNTIME_IMAGE}
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
# Last, so that a new revision re-labels the image without rebuilding a layer.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="framescale-worker" \
      org.opencontainers.image.description="framescale frame-extracting worker (no TensorFlow)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
