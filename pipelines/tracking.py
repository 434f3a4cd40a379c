"""MLflow tracking helpers shared by the jobs: one client per process, runs opened lazily."""

import time

from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.config import MlflowSettings


def tracking_client(settings: MlflowSettings) -> MlflowClient:
    """A client for the tracking server and the registry at `settings.uri`."""
    return MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created on first use."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


class RunReporter:
    """Logs a long-running job's metrics to one MLflow run, a batch per call (never per event).

    The run is created on the first report, so a job can start while the server is still down.
    """

    def __init__(self, settings: MlflowSettings, run_name: str, tags: dict[str, str]) -> None:
        self.settings = settings
        self.run_name = run_name
        self.tags = tags
        self._client: MlflowClient | None = None
        self.run_id: str | None = None

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if self._client is None:
            self._client = tracking_client(self.settings)
        if self.run_id is None:
            run = self._client.create_run(
                experiment_id(self._client, self.settings.experiment),
                run_name=self.run_name,
                tags=self.tags,
            )
            self.run_id = run.info.run_id
        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def close(self) -> None:
        if self._client is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id)
