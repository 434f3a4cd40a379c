"""Archiver benchmark: events per second from the topic into the Parquet master dataset.

A replay of CLINC150 (repeated to `events`) is produced once onto a fresh 4-partition topic;
each run archives all of it into an empty folder, from consuming to the last fsynced file.
Median of `repeats` runs; writes `bench/results/archive.json`.

    lambda-ml bench archive [--repeats 3]
"""

import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from bench import save_figures
from common.settings import ArchiveSettings, KafkaSettings, Settings
from pipelines.jobs import event_reader
from pipelines.produce import ReplayOptions, run_produce
from pipelines.services.broker import KafkaLauncher, ensure_topics
from streams.archiver import Archiver
from streams.master_dataset import history


def archive_once(kafka: KafkaSettings, archive: ArchiveSettings, root: Path, events: int) -> float:
    """Seconds to archive `events` from the start of the topic."""
    with event_reader(kafka, f"bench-archive-{time.time_ns()}", "bench") as reader:
        archiver = Archiver(reader, root, archive)
        started = time.perf_counter()
        archiver.run(threading.Event(), max_messages=events)
        return time.perf_counter() - started


def main(settings: Settings, repeats: int = 3, events: int = 200_000) -> dict:
    with KafkaLauncher.of(settings).running():  # stops only a broker it started
        return _measure(settings.kafka, settings.archive, repeats, events)


def _measure(kafka: KafkaSettings, archive: ArchiveSettings, repeats: int, events: int) -> dict:
    stream = kafka.on_topic(f"bench-archive-{time.time_ns()}")
    ensure_topics(kafka.bootstrap, {stream.topic: 4, stream.dlq_topic: 1})
    produced = run_produce(
        stream, ReplayOptions(limit=events, span_days=7), Console(file=io.StringIO())
    )
    seconds = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats):
            root = Path(scratch) / f"run-{repeat}"
            seconds.append(archive_once(stream, archive, root, events))
            assert history(root).count_rows() == events
    median = statistics.median(seconds)
    figures = {
        "events": events,
        "events_per_s": round(events / median, 1),
        "seconds_median": round(median, 2),
        "produce_events_per_s": round(produced.events_per_s, 1),
        "repeats": repeats,
    }
    return save_figures("archive", figures, {"repeats": repeats, "events": events, "partitions": 4})
