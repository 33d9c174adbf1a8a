#!/usr/bin/env bash
# The one-shot init of a cme installation: compose runs it as the `init` service after the
# databases, MLflow and Prefect answer; outside compose run it the same way, from the
# project folder, with the same environment. Idempotent: every step creates only what is
# missing, so it runs again safely after an upgrade.
#   1. the label registry's schema, as its owner (CME_DATABASE_URL here is the owner's URL;
#      the workers connect as a user that has no DDL rights)
#   2. who may change the model registry (MLflow basic auth): roles and service accounts
#   3. the Prefect work pools (cpu, gpu) and the deployments of prefect.yaml
#   4. MLflow's registry webhook to the receiver (as MLflow's admin: its webhook API is his)
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== label registry schema"
cme db upgrade
echo "== model registry access"
cme access init
echo "== work pools and deployments"
cme deploy
echo "== registry webhook"
if [ -n "${CME_WEBHOOK_URL:-}" ]; then
    MLFLOW_TRACKING_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
        MLFLOW_TRACKING_PASSWORD="$MLFLOW_AUTH_ADMIN_PASSWORD" \
        cme webhooks register "$CME_WEBHOOK_URL"
else
    echo "no CME_WEBHOOK_URL: no webhook receiver; the promotion schedule promotes"
fi
