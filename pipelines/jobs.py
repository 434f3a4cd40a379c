"""Wiring the long-running jobs to Kafka, MLflow and the process's stop signals."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event

from common.settings import (
    ArchiveSettings,
    KafkaSettings,
    MlflowSettings,
    SpeedSettings,
    StorageSettings,
)
from models.champion_watch import ChampionWatch, RegistryChampions
from models.snapshot import LocalSnapshotStore
from pipelines.speed import GroupSpeedLayer, SpeedLayer
from pipelines.tracking import RunReporter, SnapshotRegistrar, tracking_client
from streams.archiver import Archiver, recover
from streams.consumer import EventReader, GroupReader, make_consumer
from streams.producer import make_producer

REGISTRAR_STAGING = ".mlflow-outbox"
"""The folder, inside the snapshot folder, of the snapshots waiting to be registered in MLflow
(hard links, so the store may prune its own copies meanwhile; the store ignores the folder)."""


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


def run_speed(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    tracking: MlflowSettings | None,
    stop: Event,
    idle_exit_s: float | None = None,
    from_offsets: dict[int, int] | None = None,
) -> SpeedLayer | GroupSpeedLayer:
    """The speed layer until stopped; `from_offsets` forces a fresh model from those offsets.

    The model is `settings.model`'s; a factory that is not importable or not a River classifier
    fails here, before any event. With `tracking`, metrics go to an MLflow run and snapshots
    are registered as versions of `<registered model>-speed` (`SnapshotRegistrar`).
    """
    if settings.scale_out and from_offsets is None:
        return run_speed_group(kafka, settings, tracking, stop, idle_exit_s)
    store = LocalSnapshotStore(settings.snapshot_dir)
    reporter = RunReporter(tracking, "speed-layer", {"layer": "speed"}) if tracking else None
    champion_watch = (
        ChampionWatch(RegistryChampions(tracking_client(tracking), tracking.registered_model))
        if tracking
        else None
    )
    with event_reader(kafka, settings.group_id, "speed") as reader:
        layer = SpeedLayer(
            reader,
            store,
            settings,
            current_champion=champion_watch.loaded if champion_watch else (lambda: None),
            report=reporter or (lambda metrics, step: None),
        )
        registrar = (
            SnapshotRegistrar(tracking, reporter, settings.snapshot_dir / REGISTRAR_STAGING)
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
            if champion_watch:
                champion_watch.stop()
            if registrar:
                registrar.close()
            if reporter:
                reporter.close()
    return layer


def run_speed_group(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    tracking: MlflowSettings | None,
    stop: Event,
    idle_exit_s: float | None = None,
) -> GroupSpeedLayer:
    """One speed worker of the consumer group `settings.group_id` until stopped: it learns the
    partitions the group gives it, one model per partition (`GroupSpeedLayer`). Metrics go to
    an MLflow run with `tracking`; snapshots are not registered in this mode."""
    store = LocalSnapshotStore(settings.snapshot_dir)
    reporter = RunReporter(tracking, "speed-layer", {"layer": "speed"}) if tracking else None
    champion_watch = (
        ChampionWatch(RegistryChampions(tracking_client(tracking), tracking.registered_model))
        if tracking
        else None
    )
    consumer = make_consumer(
        kafka,
        settings.group_id,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    producer = make_producer(kafka, client_id="lambda-ml-speed-dlq")
    try:
        reader = GroupReader(
            consumer,
            producer,
            kafka,
            "speed",
            on_assigned=lambda ps: {},
            on_revoked=lambda ps: None,
        )
        layer = GroupSpeedLayer(
            reader,
            store,
            settings,
            current_champion=champion_watch.loaded if champion_watch else (lambda: None),
            report=reporter or (lambda metrics, step: None),
        )
        if champion_watch:
            champion_watch.start(settings.champion_poll_s)
        try:
            layer.run(stop, idle_exit_s=idle_exit_s)
        finally:
            if champion_watch:
                champion_watch.stop()
            if reporter:
                reporter.close()
    finally:
        producer.close()
        consumer.close()
    return layer


def run_archive(
    kafka: KafkaSettings,
    master_dir: Path,
    settings: ArchiveSettings,
    stop: Event,
    idle_exit_s: float | None = None,
    storage: StorageSettings | None = None,
) -> Archiver:
    """The archiver until stopped, resuming from what the master dataset already holds;
    `storage` is needed when the master dataset is on object storage."""
    positions = recover(master_dir, storage)
    with event_reader(kafka, settings.group_id, "archive") as reader:
        reader.seek(positions)
        archiver = Archiver(reader, master_dir, settings, storage=storage)
        archiver.run(stop, idle_exit_s=idle_exit_s)
    return archiver
