# Builds the engines into a model repository volume (run once before Triton starts).
FROM python:3.11-slim
WORKDIR /src
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY magicmind_build magicmind_build
COPY triton_local triton_local
COPY triton_repo triton_repo
RUN pip install --no-cache-dir ".[build]"
COPY deploy/build-repo.sh /usr/local/bin/build-repo
ENTRYPOINT ["build-repo"]
CMD ["/models"]
