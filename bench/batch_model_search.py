"""Choose the batch model's configuration on CLINC150, then measure the choice at scale.

Candidates are fitted on `train` and scored on `val` (150 in-scope intents). The chosen one,
`build_batch_model()`'s defaults, is then fitted on train+val and checked once on `test`.
For scale, train+val is replayed (each replay shuffled) into Parquet files of 1M and 2M events;
a fresh subprocess reads each in batches, counts it (`count_examples`), fits (`fit_on_counts`)
and reports its times and peak RSS. The machine is shared, so wall times come with CPU times
and the load average. Prints a summary and writes `bench/results/batch_model_search.json`.

    .venv/bin/python bench/batch_model_search.py [--skip-search] [--events 1000000 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.batch.recipe import build_batch_model, fit_on_counts
from models.losses import capped_log_losses
from pipelines.batch.counts import count_examples
from streams.dataset import CLINC150_DATA, load_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "batch_model_search.json"
SKLEARN_TOKENS = r"(?u)\b\w\w+\b"
CANDIDATES: dict[str, dict[str, Any]] = {
    "word 1-2, LinearSVC": dict(
        char_ngram_range=None, token_pattern=SKLEARN_TOKENS, min_df=1, nb_weight=0.0
    ),
    "+ char_wb 2-4": dict(token_pattern=SKLEARN_TOKENS, min_df=1, nb_weight=0.0),
    "+ one-letter words, min_df=2": dict(nb_weight=0.0),
    "+ naive Bayes averaged in, 2 folds": dict(calibration_folds=2),
    "+ temperatures on one held-out slice (the defaults)": {},
}
LATENCY_CALLS = 200
BATCH_ROWS = 65_536

Pairs = tuple[list[str], list[str]]


def load_splits(*names: str) -> dict[str, Pairs]:
    """Texts and intents of CLINC150 splits; `train`, `val` and `test` hold only the 150
    in-scope intents (out-of-scope rows have splits of their own)."""
    examples = load_dataset(CLINC150_DATA).examples
    return {
        name: (
            [e.text for e in examples if e.split == name],
            [e.intent for e in examples if e.split == name],
        )
        for name in names
    }


def scores(model, texts: list[str], intents: list[str]) -> dict[str, float]:
    """Accuracy, log loss, and expected calibration error (15 equal-width confidence bins)."""
    probabilities = model.predict_proba(texts)
    confidence = probabilities.max(axis=1)
    correct = model.classes_[probabilities.argmax(axis=1)] == np.asarray(intents)
    column = {intent: i for i, intent in enumerate(model.classes_)}
    true_class_p = np.array(
        [
            probabilities[row, column[intent]] if intent in column else 0.0
            for row, intent in enumerate(intents)
        ]
    )
    bins = np.minimum((confidence * 15).astype(int), 14)
    ece = sum(
        abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
        for b in np.unique(bins)
    )
    return {
        "accuracy": round(float(correct.mean()), 4),
        "log_loss": round(float(capped_log_losses(true_class_p).mean()), 4),
        "ece": round(float(ece), 4),
    }


def timed_fit(params: dict[str, Any], data: Pairs):
    wall, cpu = time.perf_counter(), time.process_time()
    model = build_batch_model(**params).fit(*data)
    return model, {
        "fit_s": round(time.perf_counter() - wall, 2),
        "fit_cpu_s": round(time.process_time() - cpu, 2),
    }


def single_text_latency(model, texts: list[str]) -> dict[str, float]:
    """Median wall and CPU milliseconds of `predict_proba` on one text, after a warm-up."""
    model.predict_proba(texts[:1])
    walls, cpus = [], []
    for text in texts[:LATENCY_CALLS]:
        wall, cpu = time.perf_counter(), time.process_time()
        model.predict_proba([text])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "predict_one_ms": round(1000 * float(np.median(walls)), 3),
        "predict_one_cpu_ms": round(1000 * float(np.median(cpus)), 3),
    }


def write_replay(data: Pairs, events: int, path: Path) -> None:
    """`events` rows of `data` replayed over and over, each replay in a new random order."""
    table = pa.table({"text": data[0], "intent": data[1]})
    rng = np.random.default_rng(0)
    replays = -(-events // table.num_rows)
    order = np.concatenate([rng.permutation(table.num_rows) for _ in range(replays)])[:events]
    pq.write_table(table.take(order), path, row_group_size=BATCH_ROWS)


def fit_parquet(path: Path) -> dict[str, Any]:
    """The child's work: count the Parquet file in batches, fit, then score on `test`."""
    wall, cpu = time.perf_counter(), time.process_time()
    batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["text", "intent"])
    texts, intents, weights = count_examples(batches)
    counted = time.perf_counter()
    model = fit_on_counts(build_batch_model(), texts, intents, weights)
    done = time.perf_counter()
    result = {
        "events": int(weights.sum()),
        "distinct_pairs": len(texts),
        "count_s": round(counted - wall, 2),
        "fit_s": round(done - counted, 2),
        "count_and_fit_s": round(done - wall, 2),
        "count_and_fit_cpu_s": round(time.process_time() - cpu, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return result | {"test": scores(model, *load_splits("test")["test"])}


def scale_run(data: Pairs, events: int, folder: Path) -> dict[str, Any]:
    path = folder / f"replay_{events}.parquet"
    write_replay(data, events, path)
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--fit-parquet", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(child.stdout)
    result["process_s"] = round(time.perf_counter() - started, 2)  # with start-up and imports
    path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-search", action="store_true", help="only the chosen config")
    parser.add_argument("--events", type=int, nargs="*", default=[1_000_000, 2_000_000])
    parser.add_argument("--fit-parquet", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_parquet:
        print(json.dumps(fit_parquet(args.fit_parquet)))
        return

    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "protocol": "fit on train, score on val; chosen config fitted on train+val, test once",
    }
    splits = load_splits("train", "val", "test")
    train, val, test = splits["train"], splits["val"], splits["test"]
    if not args.skip_search:
        report["candidates"] = []
        for name, params in CANDIDATES.items():
            model, times = timed_fit(params, train)
            row = {"name": name, "params": params, "val": scores(model, *val)} | times
            report["candidates"].append(row)
            print(f"{name:46s} val {row['val']}  fit {times['fit_s']}s", flush=True)

    train_val = (train[0] + val[0], train[1] + val[1])
    model, times = timed_fit({}, train_val)
    chosen = {"rows": len(train_val[0]), "test": scores(model, *test)} | times
    chosen |= single_text_latency(model, test[0])
    report["chosen"] = {"params": "build_batch_model() defaults"} | chosen
    print(f"chosen, fitted on train+val: {chosen}", flush=True)
    del model

    report["scale"] = []
    with tempfile.TemporaryDirectory() as folder:
        for events in args.events:
            row = scale_run(train_val, events, Path(folder))
            report["scale"].append(row)
            print(f"{events:,} events: {row}", flush=True)
    if len(report["scale"]) == 2:
        first, second = report["scale"]
        report["scale_ratio"] = round(second["count_and_fit_s"] / first["count_and_fit_s"], 2)
        print(f"time ratio {second['events']:,} / {first['events']:,}: {report['scale_ratio']}")
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
