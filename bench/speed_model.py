"""Benchmark the speed model against the naive River loop on the same shuffled CLINC150 stream.

Both models run prequentially (predict, then learn) over the same events: all 23,700 rows of
CLINC150, out-of-scope included, shuffled with a fixed seed. Throughput is the median of several
runs; accuracy and log loss are deterministic. Prints a summary and writes
`bench/results/speed_model.json`.

    .venv/bin/python bench/speed_model.py [--repeats 3] [--naive-events N]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from river import base, compose

from bench.river_baseline import river_baseline
from models.losses import capped_log_loss
from models.speed_model import build_speed_model
from streams.dataset import CLINC150_DATA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASET = CLINC150_DATA
RESULTS = ROOT / "bench" / "results" / "speed_model.json"

Event = tuple[dict[Any, Any], str]


@dataclass(frozen=True)
class Prequential:
    """One predict-then-learn pass: quality, and the time spent in the model's calls only.

    CPU time is reported beside wall time because the benchmark machine is shared: it is the
    throughput of one core, without the time the process waited for one.
    """

    events: int
    accuracy: float
    log_loss: float  # over events whose label the model had already seen
    seconds: float
    cpu_seconds: float


def load_lines(path: Path, seed: int) -> list[bytes]:
    """The dataset's JSON lines, shuffled with `seed` (the rows are grouped by intent)."""
    lines = path.read_bytes().splitlines()
    random.Random(seed).shuffle(lines)
    return lines


def to_events(lines: list[bytes]) -> list[Event]:
    """Decode JSON lines into (x, y) pairs as the speed layer would see them."""
    events = []
    for line in lines:
        row = json.loads(line)
        events.append(({"text": row["text"]}, row["intent"]))
    return events


def prequential(model: base.Classifier | compose.Pipeline, events: list[Event]) -> Prequential:
    """Predict each event, then learn it; time only the model's calls."""
    hits, loss, scored = 0, 0.0, 0
    seconds, cpu_seconds = 0.0, 0.0
    for x, y in events:
        start, cpu_start = time.perf_counter(), time.process_time()
        proba = model.predict_proba_one(x)
        model.learn_one(x, y)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        if proba:
            hits += max(proba, key=lambda label: proba[label]) == y
            if y in proba:
                loss += capped_log_loss(proba[y])
                scored += 1
    return Prequential(len(events), hits / len(events), loss / max(scored, 1), seconds, cpu_seconds)


def decode_and_learn_rates(lines: list[bytes]) -> tuple[float, float]:
    """Events per second and per CPU-second of JSON decoding plus predict and learn: the speed
    layer's own work per message, Kafka client aside."""
    model = build_speed_model()
    start, cpu_start = time.perf_counter(), time.process_time()
    for line in lines:
        row = json.loads(line)
        x = {"text": row["text"]}
        model.predict_proba_one(x)
        model.learn_one(x, row["intent"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return len(lines) / seconds, len(lines) / cpu_seconds


def pickle_figures(model: base.Classifier) -> dict[str, float]:
    """Snapshot size and the time to write and read it."""
    start = time.perf_counter()
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    dumped = time.perf_counter()
    pickle.loads(blob)
    loaded = time.perf_counter()
    return {
        "bytes": len(blob),
        "dump_ms": (dumped - start) * 1e3,
        "load_ms": (loaded - dumped) * 1e3,
    }


def _median_run(runs: list[Prequential]) -> dict[str, Any]:
    """The deterministic quality figures plus the median throughput of the runs."""
    seconds = statistics.median(run.seconds for run in runs)
    cpu_seconds = statistics.median(run.cpu_seconds for run in runs)
    return {
        "events": runs[0].events,
        "accuracy": runs[0].accuracy,
        "log_loss": runs[0].log_loss,
        "events_per_s": runs[0].events / seconds,
        "events_per_cpu_s": runs[0].events / cpu_seconds,
        "runs": [asdict(run) for run in runs],
    }


def run(dataset: Path, seed: int, repeats: int, naive_events: int | None) -> dict[str, Any]:
    """Run both models `repeats` times over the same stream and gather the figures."""
    load_at_start = os.getloadavg()
    lines = load_lines(dataset, seed)
    events = to_events(lines)
    prefix = events[:naive_events] if naive_events else events

    ours, ours_prefix, naive, decode_rates = [], [], [], []
    snapshot: dict[str, float] = {}
    for _ in range(repeats):
        model = build_speed_model()
        ours.append(prequential(model, events))
        snapshot = pickle_figures(model)
        ours_prefix.append(prequential(build_speed_model(), prefix))
        naive.append(prequential(river_baseline(alpha=1.0), prefix))  # River's default
        decode_rates.append(decode_and_learn_rates(lines))

    speed, baseline = _median_run(ours_prefix), _median_run(naive)
    return {
        "dataset": "CLINC150 full, all 23,700 rows incl. oos, shuffled",
        "seed": seed,
        "repeats": repeats,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "speed_model": {"params": build_speed_model()._get_params(), **_median_run(ours)},
        "speed_model_on_naive_events": speed,
        "naive_river": baseline,
        "speedup": speed["events_per_s"] / baseline["events_per_s"],
        "accuracy_gain": speed["accuracy"] - baseline["accuracy"],
        "with_json_decoding": {
            "events_per_s": statistics.median(rate for rate, _ in decode_rates),
            "events_per_cpu_s": statistics.median(rate for _, rate in decode_rates),
        },
        "pickle": snapshot,
    }


def _rate(figures: dict[str, Any]) -> str:
    return (
        f"{figures['events_per_s']:,.0f} events/s ({figures['events_per_cpu_s']:,.0f} per CPU-s), "
        f"accuracy {figures['accuracy']:.4f}, log loss {figures['log_loss']:.3f}"
    )


def report(results: dict[str, Any]) -> str:
    """A short human-readable summary of `run`'s results."""
    naive, same = results["naive_river"], results["speed_model_on_naive_events"]
    ours, decode, snapshot = (
        results["speed_model"],
        results["with_json_decoding"],
        results["pickle"],
    )
    return "\n".join(
        [
            f"{results['dataset']} (seed {results['seed']}), median of {results['repeats']} runs",
            f"naive River loop, {naive['events']} events: {_rate(naive)}",
            f"speed model, same events: {_rate(same)}",
            f"speedup x{results['speedup']:.1f}, accuracy {results['accuracy_gain']:+.4f}",
            f"speed model, {ours['events']} events: {_rate(ours)}",
            f"with JSON decoding: {decode['events_per_s']:,.0f} events/s "
            f"({decode['events_per_cpu_s']:,.0f} per CPU-s)",
            f"pickle after the stream: {snapshot['bytes'] / 1e6:.2f} MB, "
            f"dump {snapshot['dump_ms']:.1f} ms, load {snapshot['load_ms']:.1f} ms",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--naive-events",
        type=int,
        default=None,
        help="run the naive loop on this prefix only (both models are compared on it)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    results = run(args.dataset, args.seed, args.repeats, args.naive_events)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(report(results))
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
