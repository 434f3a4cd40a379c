"""MLflow tracking helpers shared by the jobs: one client per process, runs opened lazily."""

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.config import MlflowSettings

log = logging.getLogger(__name__)


def tracking_client(settings: MlflowSettings) -> MlflowClient:
    """A client for the tracking server and the registry at `settings.uri`."""
    return MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created on first use."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


class RunReporter:
    """Logs a long-running job's metrics to one MLflow run, a batch per call (never per event).

    Logging happens on a background thread, so a slow or absent server never stalls the job;
    a report that arrives while the previous one is still being sent is dropped, not queued.
    The run is created on the first report, so a job can start while the server is down.
    """

    def __init__(self, settings: MlflowSettings, run_name: str, tags: dict[str, str]) -> None:
        self.settings = settings
        self.run_name = run_name
        self.tags = tags
        self.run_id: str | None = None
        self._client: MlflowClient | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-report")
        self._pending: Future | None = None

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if self._pending is not None and not self._pending.done():
            return
        self._pending = self._executor.submit(self._send, dict(metrics), step)
        self._pending.add_done_callback(_log_failure)

    def _send(self, metrics: dict[str, float], step: int) -> None:
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait briefly for the last report, then mark the run finished."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.result(timeout=timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None and self.run_id is not None:
            with contextlib.suppress(Exception):
                self._client.set_terminated(self.run_id)


def _log_failure(future: Future) -> None:
    if future.exception() is not None:
        log.warning("could not log metrics to MLflow: %s", future.exception())
