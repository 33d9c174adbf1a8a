# syntax=docker/dockerfile:1.7
# The CPU worker of cme: `prefect worker start --pool cpu` in the project folder, on the
# locked dependencies (uv.lock). Also the image of the one-shot `init` service and of the
# `scoring` service (`cme serve`). Build from the repository root:
#   docker build -f docker/worker.Dockerfile --build-arg GIT_COMMIT=$(git rev-parse HEAD) \
#       -t cme-worker .
FROM python:3.11.11-slim-bookworm

ARG UV_VERSION=0.13.9
ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CME_PROJECT_DIR=/opt/cme \
    CME_PARAMS_FILE=/opt/cme/params.yaml

RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin cme

WORKDIR /opt/cme
# Dependencies first, in their own layer: a code change does not reinstall TensorFlow.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY cme/ cme/
COPY usecases/ usecases/
COPY registry/ registry/
COPY pipelines/ pipelines/
COPY flows/ flows/
COPY docker/init/ docker/init/
COPY params.yaml dvc.yaml prefect.yaml ./
RUN uv sync --locked --no-dev --no-editable \
    && mkdir -p /opt/cme/data /opt/cme/.cme /srv/inbox \
    && chown -R cme:cme /opt/cme /srv/inbox

# Last: a new commit changes only this layer, never the dependency layers above.
ARG GIT_COMMIT=unknown
ENV CME_GIT_COMMIT=$GIT_COMMIT

USER cme
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["prefect", "worker", "start", "--pool", "cpu", "--with-healthcheck"]
