# syntax=docker/dockerfile:1.7
# The GPU worker of cme: `prefect worker start --pool gpu` (the training step,
# deployment train-challenger/gpu) on the official TensorFlow GPU image of the version in
# uv.lock, with mixed precision and MirroredStrategy chosen by the code when GPUs are seen.
# The image brings `tensorflow` itself; the locked `tensorflow-cpu` is left out and the rest
# of uv.lock is installed as pinned. Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile --build-arg GIT_COMMIT=$(git rev-parse HEAD) \
#       -t cme-worker-gpu .
FROM tensorflow/tensorflow:2.21.0-gpu

ARG UV_VERSION=0.13.9
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CME_PROJECT_DIR=/opt/cme \
    CME_PARAMS_FILE=/opt/cme/params.yaml

# cme is locked to Python 3.11: say so at build time rather than fail at `pip install .`.
RUN python3 -c "import sys; assert sys.version_info[:2] == (3, 11), f'TensorFlow image has Python {sys.version}, cme needs 3.11'" \
    && python3 -m pip install "uv==${UV_VERSION}" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin cme

WORKDIR /opt/cme
COPY pyproject.toml uv.lock README.md ./
RUN uv export --locked --no-dev --no-hashes --no-emit-project --format requirements-txt \
        --output-file /tmp/requirements.txt \
    && grep -v '^tensorflow-cpu' /tmp/requirements.txt > /tmp/requirements-gpu.txt \
    && python3 -m pip install -r /tmp/requirements-gpu.txt
COPY cme/ cme/
COPY usecases/ usecases/
COPY registry/ registry/
COPY pipelines/ pipelines/
COPY flows/ flows/
COPY params.yaml dvc.yaml prefect.yaml ./
RUN python3 -m pip install --no-deps . \
    && mkdir -p /opt/cme/data /opt/cme/.cme \
    && chown -R cme:cme /opt/cme

# Last: a new commit changes only this layer, never the dependency layers above.
ARG GIT_COMMIT=unknown
ENV CME_GIT_COMMIT=$GIT_COMMIT

USER cme
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["prefect", "worker", "start", "--pool", "gpu", "--with-healthcheck"]
