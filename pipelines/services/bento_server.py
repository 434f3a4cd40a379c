"""The `bentoml serve` command line of the project's service: for `lambda-ml serve`, the
benchmarks and the live tests, which all launch it the same way."""

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from common.processes import ChildProcess

SERVICE_NAME = "IntentClassifier"
SERVICE_TARGET = f"serving.service:{SERVICE_NAME}"
# The workers inherit the server's output, and BentoML logs to stdout, which Python buffers in
# 8 KiB blocks when it is not a terminal: two workers' blocks would interleave mid-record (a
# warning cut from its traceback, a JSON line cut in two). Unbuffered, each record is one write.
# Usage tracking is off: a server here has no business calling home.
SERVER_ENV = {"PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "True"}


def bentoml_overrides(
    service_name: str, workers: int, access_log: bool = False, metrics: bool = True
) -> str:
    """`BENTOML_CONFIG_OVERRIDES` JSON that sets a service's workers, access log and metrics."""
    config = {
        "workers": workers,
        "logging": {"access": {"enabled": access_log}},
        "metrics": {"enabled": metrics},
    }
    return json.dumps({"services": {service_name: config}})


def bentoml_argv(target: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]


def bentoml_server(
    name: str,
    port: int,
    env: Mapping[str, str],
    *,
    target: str = SERVICE_TARGET,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> ChildProcess:
    """`bentoml serve target` on `port` as a child process, with `env` added to this process's
    environment and `SERVER_ENV` under it. Not started yet."""
    return ChildProcess(
        name,
        bentoml_argv(target, port),
        env={**os.environ, **SERVER_ENV, **env},
        cwd=cwd,
        log_path=log_path,
        port=port,
    )
