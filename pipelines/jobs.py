"""Wiring the long-running jobs to Kafka, MLflow and the process's stop signals."""

import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event
from typing import Any

from common.job_metrics import JobEndpoint
from common.settings import (
    ArchiveSettings,
    KafkaSettings,
    MlflowSettings,
    SpeedSettings,
    StorageSettings,
)
from models.champion_watch import ChampionWatch, RegistryChampions
from models.snapshot import SnapshotStore
from pipelines.job_figures import archive_collector, speed_collector
from pipelines.speed.layer import GroupSpeedLayer, SpeedLayer
from pipelines.tracking import RunReporter, SnapshotRegistrar, tracking_client
from streams.archiver import Archiver, recover
from streams.consumer import EventReader, GroupReader, make_consumer
from streams.producer import make_producer

REGISTRAR_STAGING = ".mlflow-outbox"
"""The folder, inside a local snapshot folder, of the snapshots waiting to be registered in
MLflow (copies, so the store may prune its own meanwhile; the store ignores the folder)."""


def stop_on_signals() -> Event:
    """An event set by SIGTERM or SIGINT, so a job ends cleanly with a last snapshot or flush."""
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@contextmanager
def event_reader(kafka: KafkaSettings, group_id: str, stage: str) -> Iterator[EventReader]:
    """An `EventReader` over all partitions with its own dead-letter producer, closed after."""
    consumer = make_consumer(kafka, group_id)
    producer = make_producer(kafka, client_id=f"lambda-ml-{stage}-dlq")
    try:
        yield EventReader(consumer, producer, kafka, stage)
    finally:
        producer.close()
        consumer.close()


@contextmanager
def _speed_companions(
    tracking: MlflowSettings | None,
) -> Iterator[tuple[RunReporter | None, ChampionWatch | None]]:
    """The MLflow run reporter and champion watch of a speed job (both None without
    `tracking`), stopped and closed after it."""
    reporter = RunReporter(tracking, "speed-layer", {"layer": "speed"}) if tracking else None
    champion_watch = (
        ChampionWatch(RegistryChampions(tracking_client(tracking), tracking.registered_model))
        if tracking
        else None
    )
    try:
        yield reporter, champion_watch
    finally:
        if champion_watch:
            champion_watch.stop()
        if reporter:
            reporter.close()


def _layer_companions(
    reporter: RunReporter | None,
    champion_watch: ChampionWatch | None,
    storage: StorageSettings | None,
    endpoint: JobEndpoint | None,
) -> dict[str, Any]:
    """The keyword arguments both speed layers take for their champion, report, store and
    heartbeat."""
    return {
        "current_champion": champion_watch.loaded if champion_watch else (lambda: None),
        "report": reporter or (lambda metrics, step: None),
        "storage": storage,
        "heartbeat": endpoint.heartbeat.beat if endpoint else (lambda: None),
    }


@contextmanager
def group_member(
    kafka: KafkaSettings, settings: SpeedSettings, stage: str
) -> Iterator[GroupReader]:
    """A `GroupReader` in the consumer group `settings.group_id` (its session timeout and
    heartbeat), with its own dead-letter producer, closed after."""
    consumer = make_consumer(
        kafka,
        settings.group_id,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    producer = make_producer(kafka, client_id=f"lambda-ml-{stage}-dlq")
    try:
        yield GroupReader(
            consumer, producer, kafka, stage, on_assigned=lambda ps: {}, on_revoked=lambda ps: None
        )
    finally:
        producer.close()
        consumer.close()


def _registrar_staging(store: SnapshotStore, snapshot_dir: Path) -> Path:
    """A local folder for the snapshots waiting to be registered: beside a local store's files
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
    from_offsets: dict[int, int] | None = None,
    storage: StorageSettings | None = None,
    endpoint: JobEndpoint | None = None,
) -> SpeedLayer | GroupSpeedLayer:
    """The speed layer until stopped; `from_offsets` forces a fresh model from those offsets.

    The model is `settings.model`'s; a factory that is not importable or not a River classifier
    fails here, before any event. With `tracking`, metrics go to an MLflow run and snapshots
    are registered as versions of `<registered model>-speed` (`SnapshotRegistrar`). `storage`
    is the object store of `s3://` snapshot and signal locations. The layer's figures and its
    heartbeat go to `endpoint`'s `/metrics` and `/healthz`.
    """
    if settings.scale_out and from_offsets is None:
        return run_speed_group(kafka, settings, tracking, stop, idle_exit_s, storage, endpoint)
    store = SnapshotStore(settings.snapshot_dir, storage=storage)
    with (
        _speed_companions(tracking) as (reporter, champion_watch),
        event_reader(kafka, settings.group_id, "speed") as reader,
    ):
        layer = SpeedLayer(
            reader,
            store,
            settings,
            **_layer_companions(reporter, champion_watch, storage, endpoint),
        )
        if endpoint:
            endpoint.register(speed_collector(layer))
        registrar = (
            SnapshotRegistrar(tracking, reporter, _registrar_staging(store, settings.snapshot_dir))
            if tracking and reporter
            else None
        )
        layer.register = registrar
        if champion_watch:
            if from_offsets is not None or layer.rebase_reason is not None:
                # Re-base on the current champion, not only on the next one. A registry that
                # cannot be asked fails the job: a re-base without the champion would be undone
                # by the champion's own re-base as soon as the registry answered.
                champion_watch.refresh()
            champion_watch.start(settings.champion_poll_s)
        if from_offsets is not None:
            layer.champion = layer.current_champion()
            base = layer.champion.info.version if layer.champion else None
            layer.rebase(from_offsets, base_version=base)
        elif layer.rebase_reason is not None:
            layer.rebase_on_current_champion(layer.rebase_reason)
        try:
            layer.run(stop, idle_exit_s=idle_exit_s)
        finally:
            if registrar:
                registrar.close()
    return layer


def run_speed_group(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    tracking: MlflowSettings | None,
    stop: Event,
    idle_exit_s: float | None = None,
    storage: StorageSettings | None = None,
    endpoint: JobEndpoint | None = None,
) -> GroupSpeedLayer:
    """One speed worker of the consumer group `settings.group_id` until stopped: it learns the
    partitions the group gives it, one model per partition (`GroupSpeedLayer`). Metrics go to
    an MLflow run with `tracking` and to `endpoint`; snapshots are not registered in this
    mode."""
    store = SnapshotStore(settings.snapshot_dir, storage=storage)
    with (
        group_member(kafka, settings, "speed") as reader,
        _speed_companions(tracking) as (reporter, champion_watch),
    ):
        layer = GroupSpeedLayer(
            reader,
            store,
            settings,
            **_layer_companions(reporter, champion_watch, storage, endpoint),
        )
        if endpoint:
            endpoint.register(speed_collector(layer))
        if champion_watch:
            champion_watch.start(settings.champion_poll_s)
        layer.run(stop, idle_exit_s=idle_exit_s)
    return layer


def run_archive(
    kafka: KafkaSettings,
    master_dir: Path,
    settings: ArchiveSettings,
    stop: Event,
    idle_exit_s: float | None = None,
    storage: StorageSettings | None = None,
    endpoint: JobEndpoint | None = None,
) -> Archiver:
    """The archiver until stopped, resuming from what the master dataset already holds;
    `storage` is needed when the master dataset is on object storage. Its counters and its
    heartbeat go to `endpoint`'s `/metrics` and `/healthz`."""
    positions = recover(master_dir, storage)
    with event_reader(kafka, settings.group_id, "archive") as reader:
        reader.seek(positions)
        archiver = Archiver(
            reader,
            master_dir,
            settings,
            storage=storage,
            heartbeat=endpoint.heartbeat.beat if endpoint else (lambda: None),
        )
        if endpoint:
            endpoint.register(archive_collector(archiver))
        archiver.run(stop, idle_exit_s=idle_exit_s)
    return archiver
