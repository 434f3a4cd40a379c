"""Batch-layer benchmark: CLINC150 accuracy, and whole retrains on 1M and 2M archived events.

- `clinc150_test_accuracy`: the batch model fitted on CLINC150 train+val, scored on the 4,500
  in-scope test rows (150 intents).
- `seconds_1m`, `seconds_2m`: one `retrain` each, reading the master dataset (in-scope train+val
  rows replayed until there are 1M / 2M events over 30 days of timestamps), fitting,
  evaluating on the time holdout, and logging and registering in a real MLflow server. Each
  runs in a fresh process, so `peak_rss_gib_1m` is that process's peak resident memory.

Medians of `repeats` runs; writes `bench/results/retrain.json`.

    lambda-ml bench retrain [--repeats 3]
"""

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import save_figures
from models.batch_model import build_batch_model
from pipelines import tracking_server
from pipelines.config import MlflowSettings
from streams.dataset import CLINC150_DATA, load_dataset
from streams.master_dataset import SCHEMA, FlushFile

PARTITIONS = 4


def clinc150_accuracy() -> float:
    examples = [e for e in load_dataset(CLINC150_DATA).examples if e.intent != "oos"]
    train = [e for e in examples if e.split in ("train", "val")]
    test = [e for e in examples if e.split == "test"]
    model = build_batch_model().fit([e.text for e in train], [e.intent for e in train])
    predicted = model.predict([e.text for e in test])
    return float(np.mean(predicted == np.array([e.intent for e in test])))


def write_master(root: Path, events: int, seed: int = 0) -> None:
    """`events` archived events: CLINC150 in-scope train+val rows drawn at random, in the
    archiver's own layout (one flush per partition and day)."""
    examples = [
        e for e in load_dataset(CLINC150_DATA).examples if e.intent != "oos" and e.split != "test"
    ]
    texts = pa.array([e.text for e in examples])
    intents = pa.array([e.intent for e in examples])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(examples), events)
    start = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1_000_000)
    ts = np.sort(start + rng.integers(0, 30 * 86_400 * 1_000_000, events))
    partition = np.arange(events) % PARTITIONS
    for p in range(PARTITIONS):
        rows = np.flatnonzero(partition == p)
        offsets = np.arange(len(rows))
        days = (ts[rows] - start) // (86_400 * 1_000_000)
        for day in np.unique(days):
            chosen = days == day
            first, last = int(offsets[chosen][0]), int(offsets[chosen][-1])
            table = pa.table(
                {
                    "query_id": pa.array([f"b{p}-{o}" for o in offsets[chosen]]),
                    "ts": pa.array(ts[rows][chosen], pa.timestamp("us", tz="UTC")),
                    "text": texts.take(picks[rows][chosen]),
                    "intent": intents.take(picks[rows][chosen]),
                    "user_id": pa.nulls(int(chosen.sum()), pa.string()),
                    "locale": pa.nulls(int(chosen.sum()), pa.string()),
                    "partition": pa.array(np.full(chosen.sum(), p), pa.int32()),
                    "offset": pa.array(offsets[chosen], pa.int64()),
                },
                schema=SCHEMA,
            )
            day_text = datetime.fromtimestamp((start + int(day) * 86_400_000_000) / 1e6, UTC)
            folder = root / f"date={day_text:%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / FlushFile.name(p, first, last, 1, 1))


RUN_ONE = """
import json, resource, sys, time
from pathlib import Path
from pipelines.config import BatchSettings, MlflowSettings
from pipelines.retrain import retrain
started = time.perf_counter()
result = retrain(BatchSettings(master_dir=Path(sys.argv[1]), lock_path=Path(sys.argv[1]) / "lock"),
                 MlflowSettings(tracking_uri=sys.argv[2], registered_model=sys.argv[3],
                                experiment=sys.argv[3]), "queries")
print(json.dumps({"seconds": time.perf_counter() - started, "stages": result.seconds,
                  "accuracy": result.scores.accuracy,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def timed_retrain(master: Path, uri: str, name: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE, str(master), uri, name],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(repeats: int = 3) -> dict:
    accuracy = clinc150_accuracy()
    print(f"clinc150_test_accuracy       {accuracy:.4f}")
    tracking = MlflowSettings()
    started_server = tracking_server.up(tracking)
    runs: dict[int, list[dict]] = {1_000_000: [], 2_000_000: []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for events in runs:
                master = Path(scratch) / f"master-{events}"
                write_master(master, events)
                for repeat in range(repeats):
                    name = f"bench-retrain-{events}-{time.time_ns()}"
                    runs[events].append(timed_retrain(master, tracking.uri, name))
                    print(
                        f"{events:>9} events, run {repeat + 1}: {runs[events][-1]['seconds']:.1f}s"
                    )
    finally:
        if started_server:
            tracking_server.down(tracking)
    one, two = (statistics.median(r["seconds"] for r in runs[n]) for n in runs)
    figures = {
        "clinc150_test_accuracy": round(accuracy, 4),
        "seconds_1m": round(one, 1),
        "seconds_2m": round(two, 1),
        "ratio_2m_to_1m": round(two / one, 2),
        "peak_rss_gib_1m": round(statistics.median(r["peak_rss_gib"] for r in runs[1_000_000]), 2),
        "stages_1m": runs[1_000_000][0]["stages"],
        "holdout_accuracy_1m": round(runs[1_000_000][0]["accuracy"], 4),
        "repeats": repeats,
        "bench_cpu_seconds": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime, 1),
    }
    return save_figures("retrain", figures)


if __name__ == "__main__":
    main()
