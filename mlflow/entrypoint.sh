#!/bin/sh
# The docker-compose MLflow service: runs and the model registry in Postgres, artifacts on a
# volume, served through this server so that clients need only its URL.
# Keep the flags in step with `MlflowLauncher.start_command` in
# pipelines/services/tracking_server.py (the local server).
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set it to the Postgres URL, e.g. postgresql://mlflow:mlflow@postgres:5432/mlflow}"

# The job runner serves GenAI evaluation jobs, which this project does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}" \
    --host 0.0.0.0 \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-1}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
