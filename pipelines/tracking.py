"""MLflow tracking helpers shared by the jobs: one client per process, the experiment marked as
model training, runs opened lazily, and the speed model's snapshots registered off the stream's
path."""

import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from common.durable import write_durably
from common.settings import MlflowSettings
from models.registry import MODEL_SPEC_TAG, encode_offsets
from models.snapshot import SpeedSnapshot, write_snapshot

log = logging.getLogger(__name__)


def tracking_client(settings: MlflowSettings) -> MlflowClient:
    """A client for the tracking server and the registry at `settings.uri`."""
    return MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""The experiment kind of model training, as MLflow's UI writes it ("Machine learning"): the
project's experiments hold training runs, not GenAI traces."""


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created on first use; marked as model training
    (`EXPERIMENT_KIND_TAG`) unless it already says what it holds."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def runs_page(tracking_uri: str, experiment: str) -> str:
    """The address of experiment `experiment`'s runs in MLflow's UI, in its model-training view.

    MLflow 3's UI opens every experiment in the view its sidebar switch holds (GenAI, unless
    the browser chose otherwise), whatever the experiment's kind; the address says which.

    >>> runs_page("http://127.0.0.1:5000/", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning'
    """
    view = "workflowType=machine_learning"
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs?{view}"


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
        self._run_lock = threading.Lock()
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

    def ensure_run(self) -> str:
        """The run's id, creating the run if no report has yet; safe from any thread (the
        speed model's registrar logs its artifacts to the same run)."""
        return self._client_and_run()[1]

    def _client_and_run(self) -> tuple[MlflowClient, str]:
        with self._run_lock:
            if self._client is None:
                self._client = tracking_client(self.settings)
            if self.run_id is None:
                run = self._client.create_run(
                    experiment_id(self._client, self.settings.experiment),
                    run_name=self.run_name,
                    tags=self.tags,
                )
                self.run_id = run.info.run_id
            return self._client, self.run_id

    def _send(self, metrics: dict[str, float], step: int) -> None:
        client, run_id = self._client_and_run()
        now = int(time.time() * 1000)
        client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
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


SPEED_MODEL_SUFFIX = "-speed"
SNAPSHOT_ARTIFACTS = "speed_snapshots"
"""The folder of the run's artifacts the snapshot files are logged to."""


def speed_model_name(settings: MlflowSettings) -> str:
    """The registered model the speed layer's snapshots are versions of."""
    return f"{settings.registered_model}{SPEED_MODEL_SUFFIX}"


def snapshot_tags(snapshot: SpeedSnapshot) -> dict[str, str]:
    """What a registered speed model version is tagged with: where in the stream it is, what
    it learnt, which champion it is based on, and which model and libraries it is."""
    header = snapshot.header
    return {
        "offsets": encode_offsets(snapshot.offsets),
        "events_learnt": str(snapshot.events_learnt),
        "base_version": snapshot.base_version if snapshot.base_version is not None else "none",
        "base_offsets": encode_offsets(snapshot.base_offsets),
        MODEL_SPEC_TAG: json.dumps(header.model_spec, sort_keys=True),
        "snapshot_format": str(header.format_version),
        "snapshot_sequence": str(snapshot.sequence),
        "library_versions": json.dumps(header.versions, sort_keys=True),
    }


class SnapshotRegistrar:
    """Registers speed snapshots as versions of `<registered model>-speed`, off the stream's
    path.

    Called with a snapshot just saved, it writes a copy into the local folder `staging` (so the
    store may prune its own meanwhile, and may be remote) and hands it to a daemon thread,
    which logs it as an artifact of the speed layer's run (`reporter`'s), registers that
    artifact as a new model version and tags the version (`snapshot_tags`). Only the newest
    snapshot waits: one handed over while an older one still waits replaces it. A failure
    (MLflow down) is a warning; the stream goes on.

    Parameters
    ----------
    settings
        The tracking server and the registered model's base name.
    reporter
        The run the snapshot files are logged to.
    staging
        A local folder for the files waiting to be sent; emptied on start.
    """

    def __init__(self, settings: MlflowSettings, reporter: RunReporter, staging: Path) -> None:
        self.settings = settings
        self.reporter = reporter
        self.staging = staging
        self.name = speed_model_name(settings)
        self.registered: list[str] = []
        self._client: MlflowClient | None = None
        self._model_exists = False
        self._artifact_uri: str | None = None
        self._waiting: tuple[Path, dict[str, str]] | None = None
        self._closed = False
        self._changed = threading.Condition()
        shutil.rmtree(staging, ignore_errors=True)
        self._thread = threading.Thread(target=self._drain, name="mlflow-register", daemon=True)
        self._thread.start()

    def __call__(self, location: str, snapshot: SpeedSnapshot) -> None:
        """Hand over the snapshot just saved at `location`: a local copy of it is written to
        `staging` (the store, local or remote, may prune its own meanwhile)."""
        staged = self.staging / location.rsplit("/", 1)[-1]
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            write_durably(staged, lambda handle: write_snapshot(handle, snapshot))
        except OSError as exc:
            log.warning("could not stage speed snapshot %s for MLflow: %s", location, exc)
            return
        with self._changed:
            replaced, self._waiting = self._waiting, (staged, snapshot_tags(snapshot))
            self._changed.notify()
        if replaced is not None and replaced[0] != staged:
            replaced[0].unlink(missing_ok=True)

    def _drain(self) -> None:
        while True:
            with self._changed:
                while self._waiting is None and not self._closed:
                    self._changed.wait()
                if self._waiting is None:
                    return
                (staged, tags), self._waiting = self._waiting, None
            try:
                self._register(staged, tags)
            except Exception as exc:  # the registry's copy is for people; the stream goes on
                log.warning(
                    "could not register speed snapshot %s in MLflow as %s: %s",
                    staged.name,
                    self.name,
                    exc,
                )
            finally:
                staged.unlink(missing_ok=True)

    def _register(self, staged: Path, tags: dict[str, str]) -> None:
        if self._client is None:
            self._client = tracking_client(self.settings)
        client = self._client
        run_id = self.reporter.ensure_run()
        client.log_artifact(run_id, str(staged), artifact_path=SNAPSHOT_ARTIFACTS)
        if self._artifact_uri is None:
            self._artifact_uri = client.get_run(run_id).info.artifact_uri
        if not self._model_exists:
            try:
                client.create_registered_model(
                    self.name, description="The speed layer's snapshots (models.snapshot)."
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            self._model_exists = True
        source = f"{self._artifact_uri}/{SNAPSHOT_ARTIFACTS}/{staged.name}"
        version = client.create_model_version(self.name, source=source, run_id=run_id)
        for key, value in tags.items():
            client.set_model_version_tag(self.name, version.version, key, value)
        self.registered.append(str(version.version))
        log.info(
            "speed snapshot %s registered as %s version %s (offsets %s)",
            staged.name,
            self.name,
            version.version,
            tags["offsets"],
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Send the snapshot still waiting, if any, within `timeout_s`, then stop."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout_s)
