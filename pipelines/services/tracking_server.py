"""The project's own MLflow tracking server: runs and registry in SQLite, artifacts behind it.

Clients upload and download artifacts through the server (`--serve-artifacts`), so the batch
job, the serving layer and the tests need only its URL, exactly as with the docker-compose
server that `mlflow/entrypoint.sh` starts with Postgres. With `MLFLOW_TRACKING_URI` set,
nothing is started: `up` only checks that server's health.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.processes import DetachedService, ServiceError, port_is_free
from common.settings import LocalMlflowSettings, MlflowSettings

_HOST = "127.0.0.1"
# The server's background job runner (GenAI evaluation jobs, unused here) would add eight
# Python processes and double the start-up time on a 2-core machine.
_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class ServerStatus:
    """What `status` reports; `pid` and `log_file` are None for an external server."""

    uri: str
    running: bool
    pid: int | None
    log_file: Path | None


def server_command(settings: MlflowSettings, local: LocalMlflowSettings) -> list[str]:
    """The `mlflow server` command line of the local server (the entrypoint mirrors it)."""
    home = local.home.resolve()
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(home / "artifacts"),
        "--host",
        _HOST,
        "--port",
        str(settings.port),
        "--workers",
        "1",
    ]


def up(settings: MlflowSettings, local: LocalMlflowSettings, timeout: float = 120.0) -> bool:
    """Start the local server and wait until it is healthy; True if this call started it.

    Already running, or an external server configured: nothing is started (an external
    server must answer its health check).
    """
    if not settings.uses_local_server:
        if not is_healthy(settings.uri):
            raise ServiceError(f"the MLflow server at {settings.uri} does not answer /health")
        return False
    process = _process(local)
    if process.is_running():
        return False
    if not port_is_free(settings.port, _HOST):
        raise ServiceError(
            f"port {settings.port} on {_HOST} is already in use; "
            "stop what listens there or set MLFLOW_PORT"
        )
    command = server_command(settings, local)
    if not Path(command[0]).exists():
        raise ServiceError(f"{command[0]} not found: install MLflow into this environment")
    process.start(command, env={**os.environ, **_SERVER_ENV})
    try:
        process.wait_ready(lambda: is_healthy(settings.uri), timeout)
    except BaseException:
        process.stop()
        raise
    return True


def down(settings: MlflowSettings, local: LocalMlflowSettings) -> bool:
    """Stop the local server; False if it was not running (or the server is external)."""
    return settings.uses_local_server and _process(local).stop()


def status(settings: MlflowSettings, local: LocalMlflowSettings) -> ServerStatus:
    """Whether the server runs (a local one: its pid; any: it answers /health) and where."""
    if not settings.uses_local_server:
        return ServerStatus(settings.uri, is_healthy(settings.uri), None, None)
    process = _process(local)
    pid = process.pid()
    return ServerStatus(settings.uri, pid is not None, pid, process.log_file)


def is_healthy(uri: str) -> bool:
    """Whether the server at `uri` answers its health endpoint."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2.0) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def _process(local: LocalMlflowSettings) -> DetachedService:
    return DetachedService("mlflow", local.home.resolve())
