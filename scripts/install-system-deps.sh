#!/usr/bin/env bash
# System packages the tests need beyond the Python environment: Debian's headless-capable
# Chromium, which tests/e2e/test_mlflow_ui.py drives to check the MLflow UI.
# Idempotent: installs nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: /usr/bin/chromium is missing and apt-get is not available;" \
        "install Chromium by hand" >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-system-deps: installing chromium needs root (or sudo)" >&2
        exit 1
    fi
fi

echo "install-system-deps: installing chromium with apt-get"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
