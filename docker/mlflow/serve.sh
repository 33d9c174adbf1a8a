#!/bin/sh
# Start the MLflow server with basic auth. The auth app reads its user store's URL from an
# ini file only, so the file is written here from the environment; the admin password comes
# from MLFLOW_AUTH_ADMIN_PASSWORD (read by MLflow itself, never written to disk).
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?PostgreSQL URL of the tracking store}"
: "${MLFLOW_AUTH_DATABASE_URI:?PostgreSQL URL of the user and permission store}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?e.g. s3://mlflow-artifacts}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?the admin password}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?a random secret for CSRF tokens}"

config="${MLFLOW_AUTH_CONFIG_DIR:-$HOME}/basic_auth.ini"
umask 077
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"

exec mlflow server \
    --app-name basic-auth \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --serve-artifacts \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000}" \
    --workers "${MLFLOW_WORKERS:-2}"
