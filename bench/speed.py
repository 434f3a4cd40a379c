"""Speed-layer benchmark, end to end from Kafka: the naive River loop against the speed layer.

Both read the same CLINC150 replay (all 23,700 rows, labelled, shuffled) from the same topic on
the real broker and run predict -> score -> learn on every event, so throughput includes
consuming and validating. Freshness is measured separately on a live stream: events produced at
a steady rate while the speed layer runs, timed from produce to the snapshot that holds them.
Throughput figures are medians of `repeats` runs; writes `bench/results/speed.json`.

    lambda-ml bench speed [--repeats 3]
"""

import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bench import save_figures
from models.snapshot import LocalSnapshotStore
from models.speed_model import naive_river_model
from pipelines.jobs import event_reader
from pipelines.produce import ReplayOptions, run_produce
from pipelines.speed import SpeedLayer, SpeedSettings
from streams import broker
from streams.config import KafkaSettings
from streams.dataset import CLINC150_DATA, load_dataset


def _fresh_topic(kafka: KafkaSettings, name: str, partitions: int) -> KafkaSettings:
    topic = f"bench-{name}-{time.time_ns()}"
    broker.ensure_topics(kafka.bootstrap, {topic: partitions, f"{topic}.dlq": 1})
    return kafka.model_copy(update={"topic": topic, "dlq_topic": f"{topic}.dlq"})


def naive_run(kafka: KafkaSettings, events: int) -> tuple[float, float]:
    """The naive loop over the topic: (events/s, prequential accuracy)."""
    model = naive_river_model()
    correct = learnt = 0
    with event_reader(kafka, f"bench-naive-{time.time_ns()}", "bench") as reader:
        started = time.perf_counter()
        while learnt < events:
            for item in reader.poll(timeout_ms=500):
                x = {"text": item.event.text}
                correct += model.predict_one(x) == item.event.intent
                model.learn_one(x, item.event.intent)
                learnt += 1
        seconds = time.perf_counter() - started
    return learnt / seconds, correct / learnt


def speed_run(kafka: KafkaSettings, events: int, folder: Path) -> tuple[float, float, SpeedLayer]:
    """The speed layer over the topic: (events/s, prequential accuracy, the layer)."""
    settings = SpeedSettings(snapshot_dir=folder, signal_dir=folder / "signals")
    with event_reader(kafka, f"bench-speed-{time.time_ns()}", "bench") as reader:
        layer = SpeedLayer(reader, LocalSnapshotStore(folder), settings)
        started = time.perf_counter()
        layer.run(threading.Event(), max_events=events)
        seconds = time.perf_counter() - started
    return layer.state.events_learnt / seconds, layer.state.scores.speed.accuracy, layer


def freshness_run(kafka: KafkaSettings, folder: Path, rate: float, seconds: float) -> float:
    """p95 seconds from produce to a durable snapshot that reflects the event."""
    settings = SpeedSettings(
        snapshot_dir=folder, signal_dir=folder / "signals", snapshot_every_s=1.0
    )
    options = ReplayOptions(limit=int(rate * seconds), rate=rate, run_id=f"fresh-{time.time_ns()}")
    producer = threading.Thread(
        target=run_produce, args=(kafka, options, Console(file=io.StringIO()))
    )
    stop = threading.Event()
    with event_reader(kafka, f"bench-fresh-{time.time_ns()}", "bench") as reader:
        layer = SpeedLayer(reader, LocalSnapshotStore(folder), settings)
        producer.start()
        runner = threading.Thread(target=layer.run, args=(stop,), kwargs={"idle_exit_s": 3.0})
        runner.start()
        producer.join()
        runner.join()
    return float(np.percentile(layer.freshness_s, 95))


def main(repeats: int = 3) -> dict[str, float]:
    kafka = KafkaSettings()
    broker.up(kafka)
    events = len(load_dataset(CLINC150_DATA).examples)
    stream = _fresh_topic(kafka, "speed", partitions=1)
    run_produce(stream, ReplayOptions(seed=7), Console(file=io.StringIO()))
    naive, speed, snapshot_sizes, snapshot_ms = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats):
            naive.append(naive_run(stream, events))
            folder = Path(scratch) / f"speed-{repeat}"
            rate, accuracy, layer = speed_run(stream, events, folder)
            speed.append((rate, accuracy))
            started = time.perf_counter()
            path = Path(layer.store.save(layer.snapshot_of_state()))
            snapshot_ms.append((time.perf_counter() - started) * 1000)
            snapshot_sizes.append(path.stat().st_size)
        live = _fresh_topic(kafka, "fresh", partitions=1)
        freshness = freshness_run(live, Path(scratch) / "fresh", rate=2000, seconds=15)
    naive_rate = statistics.median(r for r, _ in naive)
    speed_rate = statistics.median(r for r, _ in speed)
    figures = {
        "events": events,
        "naive_events_per_s": round(naive_rate, 1),
        "speed_events_per_s": round(speed_rate, 1),
        "ratio": round(speed_rate / naive_rate, 2),
        "naive_prequential_accuracy": round(naive[0][1], 4),
        "speed_prequential_accuracy": round(speed[0][1], 4),
        "freshness_p95_s": round(freshness, 3),
        "snapshot_bytes": int(statistics.median(snapshot_sizes)),
        "snapshot_write_ms": round(statistics.median(snapshot_ms), 1),
        "repeats": repeats,
    }
    return save_figures("speed", figures)


if __name__ == "__main__":
    main()
