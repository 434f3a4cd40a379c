"""The batch layer's engines side by side, and what a sampled training set costs.

- The history pass (de-duplication by query id, the counted distinct rows, the holdout split)
  on one master dataset of a query log (`bench.retrain.write_master`: a Zipf head of
  CLINC150's train+val rows, a synthetic tail set so that 30% of the events are distinct
  texts, 1% of them re-sent under an earlier query id), once by each engine, each in a fresh
  process: the local engine, then Spark in local mode (`local[2]`). Spark's session start is
  timed apart (a scheduler pays it once per process). The two aggregates are compared whole:
  the same distinct rows, the same counts, the same holdout texts.
- The same pass with late labels: labels on the feedback topic for a share of the queries
  (their own intents, so the aggregate must not change), joined by each engine; what the join
  costs over the inline pass, and the aggregates compared whole again.
- The sampled fit: on a smaller history of the same shape, where the full fit still runs, the
  batch model fitted on every distinct training row and on a sample of a tenth of them
  (`pipelines.batch.training_sample`), both scored first-seen on the same holdout.

Part of `lambda-ml bench retrain --engine local,spark`; the figures go to retrain.json.
"""

import pickle
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.retrain import HOLDOUT_FRACTION, _child, in_scope, tail_for, write_master
from models.batch.recipe import build_batch_model, fit_on_counts
from pipelines.batch.history import read_history_split
from pipelines.batch.holdout_report import score_holdout
from pipelines.batch.training_sample import sample_split
from pipelines.provenance import provenance
from streams.master_dataset import FEEDBACK, FlushFile, archived_positions, history

PASS_EVENTS = 10_000_000
SAMPLE_EVENTS = 150_000
DISTINCT = 0.30
RESENT = 0.01
SAMPLE_SHARE = 0.10
LATE_SHARE = 0.30
SPARK_MASTER = "local[2]"
MAX_RATIO = 2.0
MAX_GAP_POINTS = 0.5

# One engine's pass in a fresh process: `repeats` passes, the last one's aggregate pickled.
HISTORY_PASS = """
import json, pickle, resource, sys, time
from pathlib import Path
from common.settings import BatchSettings
from pipelines.batch.counts import split_counts
from pipelines.batch.history import count_history
from streams.master_dataset import archived_cutoff
engine, master, out, repeats, fraction, spark_master = sys.argv[1:7]
batch = BatchSettings(master_dir=Path(master), engine=engine, spark_master=spark_master)
cutoff = archived_cutoff(batch.master_dir)
start = 0.0
if engine == "spark":
    from pipelines.batch.history_spark import spark_session
    mark = time.perf_counter()
    spark_session(spark_master, batch.spark_conf)
    start = time.perf_counter() - mark
passes, counting = [], []
for _ in range(int(repeats)):
    mark = time.perf_counter()
    counts = count_history(batch, cutoff)
    counted = time.perf_counter()
    split = split_counts(counts, float(fraction))
    passes.append(time.perf_counter() - mark)
    counting.append(counted - mark)
with open(out, "wb") as handle:
    pickle.dump((counts.texts, counts.intents, counts.counts, split.holdout_texts,
                 split.holdout_weights), handle)
print(json.dumps({"pass_seconds": passes, "count_seconds": counting,
                  "session_start_seconds": start, "lineage": split.lineage,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _pass(engine: str, master: Path, out: Path, repeats: int) -> dict:
    args = (engine, str(master), str(out), str(repeats), str(HOLDOUT_FRACTION), SPARK_MASTER)
    return _child(HISTORY_PASS, *args)


def _identical(one: Path, other: Path) -> bool:
    """Whether two pickled aggregates (`HISTORY_PASS`) hold the same rows, counts and holdout."""
    with one.open("rb") as a, other.open("rb") as b:
        left, right = pickle.load(a), pickle.load(b)
    texts, intents, counts, holdout, holdout_weights = left
    return (
        texts == right[0]
        and intents == right[1]
        and np.array_equal(counts, right[2])
        and holdout == right[3]
        and np.array_equal(holdout_weights, right[4])
    )


def add_late_labels(master: Path, share: float, seed: int) -> int:
    """Labels on the feedback topic, in the archiver's layout, for a `share` of the archived
    queries (each its own intent: the join must leave the aggregate as it was); how many."""
    queries = history(master).to_table(columns=["query_id", "intent", "ts", "partition"])
    chosen = queries.filter(pa.array(np.random.default_rng(seed).random(queries.num_rows) < share))
    partitions = chosen["partition"].to_numpy()
    folder = master / f"{FEEDBACK.prefix}date=2026-11-01"
    folder.mkdir(parents=True)
    for partition in np.unique(partitions).tolist():
        mine = chosen.filter(pa.array(partitions == partition))
        table = pa.table(
            {
                "query_id": mine["query_id"],
                "intent": mine["intent"],
                "ts": mine["ts"],
                "source": pa.nulls(mine.num_rows, pa.string()),
                "partition": mine["partition"],
                "offset": pa.array(np.arange(mine.num_rows), pa.int64()),
            },
            schema=FEEDBACK.schema,
        )
        pq.write_table(table, folder / FlushFile.name(partition, 0, mine.num_rows - 1, 1, 1))
    return chosen.num_rows


def _both_engines(master: Path, scratch: Path, repeats: int, labels: str) -> dict:
    """Each engine's pass over `master` (`_pass`), their aggregates pickled as
    `<labels>-<engine>.pkl`, and whether the two are identical."""
    local = _pass("local", master, scratch / f"{labels}-local.pkl", repeats)
    print(f"local engine, {labels} labels: {local['pass_seconds']}", flush=True)
    spark = _pass("spark", master, scratch / f"{labels}-spark.pkl", repeats)
    print(f"spark engine, {labels} labels: {spark['pass_seconds']}", flush=True)
    identical = _identical(scratch / f"{labels}-local.pkl", scratch / f"{labels}-spark.pkl")
    return {"local": local, "spark": spark, "identical": identical}


def compare_engines(scratch: Path, events: int, repeats: int) -> dict:
    """Both engines' pass over one master dataset of `events` events, with inline labels and
    then with late ones for a `LATE_SHARE` of the queries; medians of `repeats`."""
    examples = in_scope(("train", "val"))
    master = scratch / "engines"
    tail = tail_for(DISTINCT, events, len(examples))
    stream = write_master(master, examples, events, tail, seed=7, resent=RESENT)
    print(f"history of {events} events written: {stream}", flush=True)
    inline = _both_engines(master, scratch, repeats, "inline")
    local, spark = inline["local"], inline["spark"]
    late_labels = add_late_labels(master, LATE_SHARE, seed=7)
    late = _both_engines(master, scratch, repeats, "late")
    local_s, spark_s, late_local_s, late_spark_s = (
        statistics.median(r["pass_seconds"]) for r in (local, spark, late["local"], late["spark"])
    )
    first = spark["pass_seconds"][0] / local["pass_seconds"][0]
    lineage = spark["lineage"]
    return {
        **stream,
        "spark_master": SPARK_MASTER,
        "repeats": repeats,
        "local_pass_seconds": round(local_s, 2),
        "spark_pass_seconds": round(spark_s, 2),
        "spark_vs_local": round(spark_s / local_s, 3),
        "spark_vs_local_first_pass": round(first, 3),
        "local_count_seconds": round(statistics.median(local["count_seconds"]), 2),
        "spark_count_seconds": round(statistics.median(spark["count_seconds"]), 2),
        "spark_session_start_seconds": round(spark["session_start_seconds"], 2),
        "local_peak_rss_gib": round(local["peak_rss_gib"], 2),
        "spark_driver_peak_rss_gib": round(spark["peak_rss_gib"], 2),
        "aggregate_rows": int(lineage["aggregate_rows"]),
        "aggregate_bytes": int(lineage["aggregate_bytes"]),
        "duplicates_dropped": int(lineage["duplicates_dropped"]),
        "aggregates_identical": inline["identical"],
        "late_labels": late_labels,
        "late_labels_joined": int(late["spark"]["lineage"]["labels_joined"]),
        "local_late_labels_pass_seconds": round(late_local_s, 2),
        "spark_late_labels_pass_seconds": round(late_spark_s, 2),
        "local_late_labels_vs_inline": round(late_local_s / local_s, 3),
        "spark_late_labels_vs_inline": round(late_spark_s / spark_s, 3),
        "late_labels_aggregates_identical": late["identical"]
        and _identical(scratch / "late-local.pkl", scratch / "inline-local.pkl"),
    }


def sampled_fit(scratch: Path, events: int, share: float = SAMPLE_SHARE) -> dict:
    """The batch model on every distinct training row vs on a `share` of them, first-seen on
    the same holdout."""
    examples = in_scope(("train", "val"))
    master = scratch / "sampled"
    stream = write_master(master, examples, events, tail_for(DISTINCT, events, len(examples)), 8)
    split = read_history_split(master, archived_positions(master), HOLDOUT_FRACTION)
    figures: dict = {**stream, "distinct_train_rows": len(split.texts), "sample_share": share}
    for name, rows in (
        ("full", split),
        ("sampled", sample_split(split, int(share * len(split.texts)), 0)),
    ):
        model = fit_on_counts(build_batch_model(), rows.texts, rows.intents, rows.weights)
        scores, _, _ = score_holdout(model, *split.holdout)
        figures[f"{name}_rows"] = len(rows.texts)
        figures[f"{name}_first_seen_accuracy"] = round(scores.first_seen_accuracy, 4)
        print(f"{name} fit on {len(rows.texts)} rows: {scores.first_seen_accuracy:.4f}", flush=True)
    gap = 100 * (figures["full_first_seen_accuracy"] - figures["sampled_first_seen_accuracy"])
    return figures | {"first_seen_gap_points": round(gap, 2)}


def kept_figures(previous: dict) -> dict:
    """The engine figures of an earlier result file, kept by a run that does not measure them."""
    return {
        key: value
        for key, value in previous.items()
        if key.startswith(("spark_vs_local_", "local_late_labels_", "engine_", "sampled_fit"))
    }


def main(repeats: int, pass_events: int = PASS_EVENTS, sample_events: int = SAMPLE_EVENTS) -> dict:
    """The engine comparison and the sampled fit, as retrain.json's figures of the engines."""
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        scratch = Path(folder)
        engines = compare_engines(scratch, pass_events, repeats)
        sample = sampled_fit(scratch, sample_events)
    settings = {"pass_events": pass_events, "sample_events": sample_events, "repeats": repeats}
    engines["provenance"] = sample["provenance"] = provenance(settings)
    millions = f"{pass_events / 1_000_000:g}m"
    ratio, gap = engines["spark_vs_local"], sample["first_seen_gap_points"]
    return {
        f"spark_vs_local_history_pass_{millions}": ratio,
        "engine_aggregates_identical": engines["aggregates_identical"],
        f"local_late_labels_vs_inline_history_pass_{millions}": engines[
            "local_late_labels_vs_inline"
        ],
        "engine_aggregates_identical_late_labels": engines["late_labels_aggregates_identical"],
        "sampled_fit_first_seen_gap_points": gap,
        "engine_goal_met": {
            "engine_aggregates_identical": engines["aggregates_identical"],
            f"spark_vs_local_history_pass_{millions} <= {MAX_RATIO}": ratio <= MAX_RATIO,
            f"sampled_fit_first_seen_gap_points <= {MAX_GAP_POINTS}": abs(gap) <= MAX_GAP_POINTS,
        },
        "engine_comparison": engines,
        "sampled_fit": sample,
    }
