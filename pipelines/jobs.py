"""Wiring the long-running jobs to Kafka, MLflow and the process's stop signals."""

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event, Thread

from common.settings import ArchiveSettings, KafkaSettings, MlflowSettings, SpeedSettings
from models.registry import ChampionModel, fetch_champion, load_champion
from models.snapshot import LocalSnapshotStore
from pipelines.speed import SpeedLayer
from pipelines.tracking import RunReporter, tracking_client
from streams.archiver import Archiver, recover
from streams.consumer import EventReader, make_consumer
from streams.producer import make_producer

log = logging.getLogger(__name__)


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


class ChampionPoller:
    """Keeps the registry's champion loaded, from a background thread.

    The stream never waits on the registry: `__call__` returns whatever was loaded last, and
    a registry that is down only means the next poll tries again.
    """

    def __init__(self, settings: MlflowSettings, poll_s: float) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self._loaded: ChampionModel | None = None
        self._stop = Event()
        self._thread = Thread(target=self._poll_forever, name="champion-poller", daemon=True)

    def __call__(self) -> ChampionModel | None:
        return self._loaded

    def poll_once(self) -> ChampionModel | None:
        info = fetch_champion(tracking_client(self.settings), self.settings.registered_model)
        if info is not None and (self._loaded is None or self._loaded.info.version != info.version):
            self._loaded = load_champion(info, with_training_texts=True)
            log.info("loaded champion version %s", info.version)
        return self._loaded

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # keep the champion we have; try again next time
                log.warning("champion poll failed: %s", exc)
            self._stop.wait(self.poll_s)

    def start(self) -> "ChampionPoller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def run_speed(
    kafka: KafkaSettings,
    settings: SpeedSettings,
    tracking: MlflowSettings | None,
    stop: Event,
    idle_exit_s: float | None = None,
    from_offsets: dict[int, int] | None = None,
) -> SpeedLayer:
    """The speed layer until stopped; `from_offsets` forces a fresh model from those offsets."""
    store = LocalSnapshotStore(settings.snapshot_dir)
    reporter = RunReporter(tracking, "speed-layer", {"layer": "speed"}) if tracking else None
    poller = ChampionPoller(tracking, settings.champion_poll_s) if tracking else None
    with event_reader(kafka, settings.group_id, "speed") as reader:
        layer = SpeedLayer(
            reader,
            store,
            settings,
            champion_source=poller or (lambda: None),
            report=reporter or (lambda metrics, step: None),
        )
        if poller:
            if from_offsets is not None:
                poller.poll_once()  # re-base on the current champion, not only on the next one
            poller.start()
        if from_offsets is not None:
            layer.champion = layer.champion_source()
            base = layer.champion.info.version if layer.champion else None
            layer.rebase(from_offsets, base_version=base)
        try:
            layer.run(stop, idle_exit_s=idle_exit_s)
        finally:
            if poller:
                poller.stop()
            if reporter:
                reporter.close()
    return layer


def run_archive(
    kafka: KafkaSettings,
    master_dir: Path,
    settings: ArchiveSettings,
    stop: Event,
    idle_exit_s: float | None = None,
) -> Archiver:
    """The archiver until stopped, resuming from what the master dataset already holds."""
    positions = recover(master_dir)
    with event_reader(kafka, settings.group_id, "archive") as reader:
        reader.seek(positions)
        archiver = Archiver(reader, master_dir, settings)
        archiver.run(stop, idle_exit_s=idle_exit_s)
    return archiver
