"""The speed job: one worker of the consumer group `SpeedSettings.group_id` wired to Kafka,
MLflow (its run, the champion, the registered speed model) and the job's `/metrics`."""

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from threading import Event

from common.job_metrics import JobEndpoint
from common.settings import KafkaSettings, MlflowSettings, SpeedSettings, StorageSettings
from models.champion_watch import ChampionWatch, RegistryChampions
from models.snapshot import SnapshotStore
from pipelines.jobs import event_reader
from pipelines.speed.figures import speed_collector
from pipelines.speed.layer import SpeedLayer
from pipelines.tracking import RunReporter, SnapshotRegistrar, tracking_client

REGISTRAR_STAGING = ".mlflow-outbox"
"""The folder, inside a local snapshot folder, of the models waiting to be registered in
MLflow (copies, so the store may prune its own meanwhile; the store ignores the folder)."""


@contextmanager
def _tracking(
    tracking: MlflowSettings | None, store: SnapshotStore, snapshot_dir: Path
) -> Iterator[tuple[RunReporter | None, ChampionWatch | None, SnapshotRegistrar | None]]:
    """The MLflow run reporter, champion watch and registrar of a speed job (all None without
    `tracking`), stopped and closed after it."""
    if tracking is None:
        yield None, None, None
        return
    staging = _registrar_staging(store, snapshot_dir)
    reporter = RunReporter(tracking, "speed-layer", {"layer": "speed"})
    try:
        watch = ChampionWatch(
            RegistryChampions(tracking_client(tracking), tracking.registered_model)
        )
        try:
            registrar = SnapshotRegistrar(tracking, reporter, staging)
            try:
                yield reporter, watch, registrar
            finally:
                registrar.close()
        finally:
            watch.stop()
    finally:
        reporter.close()


def _registrar_staging(store: SnapshotStore, snapshot_dir: Path) -> Path:
    """A local folder for the models waiting to be registered: beside a local store's files
    (which it ignores), or a temporary folder when the store is remote."""
    if store.storage.is_local:
        return snapshot_dir / REGISTRAR_STAGING
    return Path(tempfile.mkdtemp(prefix="lambda-ml-outbox-"))


def run_speed(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    tracking: MlflowSettings | None,
    stop: Event,
    idle_exit_s: float | None = None,
    replay_from: Mapping[int, int] | None = None,
    storage: StorageSettings | None = None,
    endpoint: JobEndpoint | None = None,
) -> SpeedLayer:
    """One speed worker until stopped (or idle for `idle_exit_s`); `replay_from` starts each
    partition it is given afresh from those offsets (`lambda-ml replay`). It reads the labels
    of the feedback topic beside the queries when that topic exists.

    The model is `settings.model`'s; a factory that is not importable or not a River classifier
    fails here, before any event. With `tracking`, metrics go to an MLflow run, the champion is
    followed, and the whole model is registered as versions of `<registered model>-speed`
    (`SnapshotRegistrar`). The champion is looked up before the worker joins its group, so the
    partitions start on it: a replay fails when the registry cannot say which it is (a replay
    without it would be undone by its re-base as soon as the registry answered); a plain start
    goes on and follows the champion once the registry answers. `storage` is the object store
    of `s3://` snapshot and signal locations. The layer's figures and its heartbeat go to
    `endpoint`'s `/metrics` and `/healthz`.
    """
    store = SnapshotStore(settings.snapshot_dir, storage=storage)
    with (
        _tracking(tracking, store, settings.snapshot_dir) as (
            reporter,
            watch,
            registrar,
        ),
        event_reader(
            kafka,
            settings.group_id,
            "speed",
            feedback=True,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        ) as reader,
    ):
        layer = SpeedLayer(
            reader,
            store,
            settings,
            current_champion=watch.loaded if watch else (lambda: None),
            report=reporter or (lambda metrics, step: None),
            register=registrar,
            storage=storage,
            heartbeat=endpoint.heartbeat.beat if endpoint else (lambda: None),
            replay_from=replay_from,
        )
        if endpoint:
            endpoint.register(speed_collector(layer))
        if watch:
            if replay_from is not None:
                watch.refresh()
            else:
                watch.poll()
            watch.start(settings.champion_poll_s)
        layer.run(stop, idle_exit_s=idle_exit_s)
    return layer
