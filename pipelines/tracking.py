"""MLflow tracking helpers shared by the jobs: one client per process, runs opened lazily."""

import contextlib
import logging
import queue
import threading
import time

from mlflow import MlflowClient
from mlflow.entities import Metric

from common.settings import MlflowSettings

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

    Logging happens on a daemon thread, so a slow or absent server neither stalls the job nor
    keeps its process alive at exit; a report that arrives while the previous one is still
    being sent is dropped, not queued. The run is created on the first report that gets through.
    """

    def __init__(self, settings: MlflowSettings, run_name: str, tags: dict[str, str]) -> None:
        self.settings = settings
        self.run_name = run_name
        self.tags = tags
        self.run_id: str | None = None
        self._client: MlflowClient | None = None
        self._outbox: queue.Queue[tuple[dict[str, float], int] | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._drain, name="mlflow-report", daemon=True)
        self._thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait((dict(metrics), step))

    def _drain(self) -> None:
        while (item := self._outbox.get()) is not None:
            try:
                self._send(*item)
            except Exception as exc:  # metrics are for people; the job goes on without them
                log.warning("could not log metrics to MLflow: %s", exc)

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

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (waiting at most `timeout_s` in all), then mark the run finished."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._outbox.put(None, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._client is not None and self.run_id is not None and not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._client.set_terminated(self.run_id)
