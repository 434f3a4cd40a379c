"""What the long-running jobs share (the stop signals, the reader of the stream), and the
archive job; the speed job is `pipelines.speed.job`."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event
from typing import Any

from common.job_metrics import Family, FiguresCollector, JobEndpoint, Sample
from common.settings import ArchiveSettings, KafkaSettings, StorageSettings
from streams.archiver import Archiver
from streams.consumer import EventReader, make_consumer
from streams.producer import make_producer


def stop_on_signals() -> Event:
    """An event set by SIGTERM or SIGINT, so a job ends cleanly with a last snapshot or flush."""
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@contextmanager
def event_reader(
    kafka: KafkaSettings, group_id: str, stage: str, feedback: bool = False, **consumer: Any
) -> Iterator[EventReader]:
    """An `EventReader`, one member of the consumer group `group_id` (`consumer`: further
    settings of its consumer; `feedback`: it reads the feedback topic too, when it exists),
    with its own dead-letter producer; both closed after."""
    producer = make_producer(kafka, client_id=f"lambda-ml-{stage}-dlq")
    try:
        member = make_consumer(kafka, group_id, **consumer)
        reader = EventReader(member, producer, kafka, stage, feedback=feedback)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        producer.close()


ARCHIVE = "lambda_ml_archive"
ARCHIVE_FAMILIES = (
    Family(f"{ARCHIVE}_events", "Events written to the master dataset", "counter"),
    Family(f"{ARCHIVE}_files_written", "Parquet files written", "counter"),
    Family(f"{ARCHIVE}_bytes_written", "Bytes of Parquet written", "counter"),
    Family(f"{ARCHIVE}_failed_flushes", "Flush attempts that failed (retried)", "counter"),
    Family(f"{ARCHIVE}_dead_letters", "Invalid messages sent to the dead-letter topic", "counter"),
    Family(f"{ARCHIVE}_events_per_second", "Events archived per second by the last flush"),
    Family(
        f"{ARCHIVE}_lag_events",
        "Events on the topic not yet read, as of the last flush",
        labels=("partition",),
    ),
)


def archive_samples(archiver: Archiver) -> Iterator[Sample]:
    """The archiver's counters, as its `/metrics` shows them."""
    yield f"{ARCHIVE}_events", (), archiver.archived
    yield f"{ARCHIVE}_files_written", (), archiver.files_written
    yield f"{ARCHIVE}_bytes_written", (), archiver.bytes_written
    yield f"{ARCHIVE}_failed_flushes", (), archiver.failed_flushes
    yield f"{ARCHIVE}_dead_letters", (), archiver.reader.dead_lettered
    yield f"{ARCHIVE}_events_per_second", (), archiver.events_per_s
    for partition, behind in sorted((archiver.lag or {}).items()):
        yield f"{ARCHIVE}_lag_events", (str(partition),), behind


def run_archive(
    kafka: KafkaSettings,
    master_dir: Path,
    settings: ArchiveSettings,
    stop: Event,
    idle_exit_s: float | None = None,
    storage: StorageSettings | None = None,
    endpoint: JobEndpoint | None = None,
) -> Archiver:
    """The archiver until stopped, each partition resuming from what the master dataset already
    holds; `storage` is needed when the master dataset is on object storage. Its counters and
    its heartbeat go to `endpoint`'s `/metrics` and `/healthz`.

    The archiver is its group's one static member (named after the group): restarted after a
    crash, it takes its partitions back at once instead of waiting for its old session to
    time out; a second archiver of the same group fences the first rather than splitting the
    partitions with it."""
    with event_reader(
        kafka, settings.group_id, "archive", feedback=True, group_instance_id=settings.group_id
    ) as reader:
        archiver = Archiver(
            reader,
            master_dir,
            settings,
            storage=storage,
            heartbeat=endpoint.heartbeat.beat if endpoint else (lambda: None),
        )
        if endpoint:
            endpoint.register(FiguresCollector(ARCHIVE_FAMILIES, lambda: archive_samples(archiver)))
        archiver.run(stop, idle_exit_s=idle_exit_s)
    return archiver
