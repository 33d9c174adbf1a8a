# syntax=docker/dockerfile:1.7
# The MLflow tracking server and model registry of cme: PostgreSQL backend store, artifacts
# proxied to an S3-compatible store (MinIO), and the basic-auth app: everyone signed in
# reads, only the cme-pipeline and cme-reviewer roles write (`cme access init` sets them up).
# Build from the repository root: docker build -f docker/mlflow.Dockerfile -t cme-mlflow .
FROM python:3.11.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==2.9.13" "boto3>=1.35,<2" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin mlflow
COPY docker/mlflow/serve.sh /usr/local/bin/cme-mlflow-serve
RUN chmod 0755 /usr/local/bin/cme-mlflow-serve

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["cme-mlflow-serve"]
