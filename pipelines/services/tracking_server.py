"""The project's own MLflow tracking server: runs and registry in SQLite, artifacts behind it.

Clients upload and download artifacts through the server (`--serve-artifacts`), so the batch
job, the serving layer and the tests need only its URL, exactly as with the docker-compose
server that `mlflow/entrypoint.sh` starts with Postgres. With `MLFLOW_TRACKING_URI` set,
nothing is started: `up` only checks that server's health.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from common.processes import ServiceError
from common.settings import LocalMlflowSettings, MlflowSettings, Settings
from pipelines.services.launcher import Launcher

_HOST = "127.0.0.1"
# The server's background job runner (GenAI evaluation jobs, unused here) would add eight
# Python processes and double the start-up time on a 2-core machine.
_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class MlflowLauncher(Launcher[MlflowSettings, LocalMlflowSettings]):
    """The local tracking server, or the one at MLFLOW_TRACKING_URI."""

    name = product = "MLflow"
    command, prefix, address_variable = "mlflow", "MLFLOW_", "MLFLOW_TRACKING_URI"
    start_timeout_s = 120.0

    def __init__(self, settings: MlflowSettings, local: LocalMlflowSettings) -> None:
        super().__init__(settings, local, settings.uri, importlib.metadata.version("mlflow"))

    @classmethod
    def of(cls, tree: Settings) -> MlflowLauncher:
        return cls(tree.mlflow, tree.local_mlflow)

    def fetch(self) -> Path:
        """Check that this environment has the `mlflow` command (MLflow is installed with the
        project: there is nothing to download)."""
        executable = Path(sys.executable).with_name("mlflow")
        if not executable.exists():
            raise ServiceError(f"{executable} not found: install MLflow into this environment")
        return executable

    def start_command(self) -> list[str]:
        """The `mlflow server` command line of the local server (the entrypoint mirrors it)."""
        home = self.local.home.resolve()
        return [
            str(self.fetch()),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--host",
            _HOST,
            "--port",
            str(self.settings.port),
            "--workers",
            "1",
        ]

    def environment(self) -> Mapping[str, str]:
        return {**os.environ, **_SERVER_ENV}

    def answers(self) -> bool:
        """It answers /health."""
        return is_healthy(self.address)


def is_healthy(uri: str) -> bool:
    """Whether the server at `uri` answers its health endpoint."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2.0) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False
