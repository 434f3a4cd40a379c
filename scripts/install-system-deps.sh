#!/usr/bin/env bash
# System packages the tests need beyond the Python environment: Debian's headless-capable
# Chromium, which tests/e2e/test_mlflow_ui.py drives to check the MLflow UI, and Debian's
# Prometheus server, which tests/integration/test_job_metrics.py runs to scrape every job.
# Idempotent: installs nothing when /usr/bin/chromium and /usr/bin/prometheus are already there.
set -euo pipefail

declare -A BINARIES=([chromium]=/usr/bin/chromium [prometheus]=/usr/bin/prometheus)
MISSING=()
for package in "${!BINARIES[@]}"; do
    [[ -x ${BINARIES[$package]} ]] || MISSING+=("$package")
done

if [[ ${#MISSING[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: ${MISSING[*]} missing and apt-get is not available;" \
        "install them by hand" >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-system-deps: installing ${MISSING[*]} needs root (or sudo)" >&2
        exit 1
    fi
fi

echo "install-system-deps: installing ${MISSING[*]} with apt-get"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${MISSING[@]}" >/dev/null
for package in "${MISSING[@]}"; do
    test -x "${BINARIES[$package]}"
done
