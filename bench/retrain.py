"""Batch-layer benchmark: CLINC150 accuracy, and whole retrains against a bare fit of the same rows.

- `clinc150_test_accuracy`: the batch model fitted on CLINC150 train+val, scored on the 4,500
  in-scope test rows (150 intents): texts the model never saw, first-seen by construction.
- The scale matrix: master datasets of 1M and 2M events shaped like a query log
  (`streams.query_log`: a Zipf head of the dataset's train+val rows and a tail of generated,
  synthetic variants), with the tail set so that 2%, 10% and 30% of the events are distinct
  texts (at 30%, about 300k and 600k distinct texts). For each, a champion is registered first
  (trained on the dataset's rows), then one `retrain` runs in a fresh process: read, fit,
  evaluate against that champion on the text-disjoint holdout, log and register in MLflow,
  with its seconds per stage. Its peak resident memory is that process's, with its n-gram
  counting workers' peaks beside it. In the same run, a bare fit of the same model on the same
  distinct training rows, already in memory, runs in another fresh process: the baseline the
  retrain's time is divided by, and, from 1M to 2M events at 30%, the fit's growth.
- The sampled fit, at the largest configuration (where the full fit runs): the bare fit's
  first-seen holdout accuracy against that of a fit on a tenth of its rows
  (`pipelines.batch.training_sample`), on the same holdout.

Everything is tracked in an MLflow server of the benchmark's own (a temporary store, removed at
the end), so the user's registry never sees the benchmark's models. Writes
`bench/results/retrain.json`; a run of some configurations replaces only those, and every
configuration keeps the stamp of the run that measured it.

    lambda-ml bench retrain [--repeats 1] [--sizes 1000000,2000000] [--distinct 0.02,0.1,0.3]
    lambda-ml bench retrain --sizes 100000 --distinct 0.3    # a smoke run of a few minutes
"""

import json
import pickle
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import RESULTS_DIR, save_figures
from common.processes import free_port
from common.settings import BatchSettings, LocalMlflowSettings, MlflowSettings
from models.batch.recipe import build_batch_model
from pipelines.batch.counts import HistorySplit
from pipelines.batch.history import read_history_split
from pipelines.provenance import provenance
from pipelines.services.tracking_server import MlflowLauncher
from streams.dataset import CLINC150_DATA, Example, load_dataset
from streams.master_dataset import SCHEMA, FlushFile, archived_positions
from streams.query_log import QueryLog
from streams.scenarios import Scenario, replay

PARTITIONS = 4
SIZES = (1_000_000, 2_000_000)
DISTINCT = (0.02, 0.10, 0.30)
SAMPLE_SHARE = 0.10


def in_scope(splits: tuple[str, ...]) -> list[Example]:
    return [
        e for e in load_dataset(CLINC150_DATA).examples if e.intent != "oos" and e.split in splits
    ]


def clinc150_accuracy() -> float:
    train, test = in_scope(("train", "val")), in_scope(("test",))
    model = build_batch_model().fit([e.text for e in train], [e.intent for e in train])
    predicted = model.predict([e.text for e in test])
    return float(np.mean(predicted == np.array([e.intent for e in test])))


def tail_for(distinct: float, events: int, head_rows: int) -> float:
    """The query log's tail share that makes about `distinct` of `events` distinct texts: the
    head contributes at most its `head_rows` texts, each variant in the tail about one."""
    return min(1.0, max(0.0, distinct - head_rows / events))


def write_master(
    root: Path,
    examples: list[Example],
    events: int,
    tail: float | None,
    seed: int,
    resent: float = 0.0,
) -> dict:
    """`events` archived events of a query-log replay of `examples` (with `tail=None`, the rows
    in shuffled passes), in the archiver's layout (one flush per partition and day over 30
    days), a `resent` share of them sent again (the event before, under its query id, in
    another partition); returns what the stream holds."""
    log = None if tail is None else QueryLog(tail)
    scenario = Scenario("shuffle", length=events, seed=seed, query_log=log)
    texts, intents, synthetic = [], [], 0
    for item in replay(examples, scenario):
        texts.append(item.example.text)
        intents.append(item.example.intent)
        synthetic += item.synthetic
    rng = np.random.default_rng(seed)
    query_ids = [f"b{n % PARTITIONS}-{n // PARTITIONS}" for n in range(events)]
    for n in np.flatnonzero(rng.random(events) < resent).tolist():
        if n:
            texts[n], intents[n], query_ids[n] = texts[n - 1], intents[n - 1], query_ids[n - 1]
    text_array, intent_array, id_array = pa.array(texts), pa.array(intents), pa.array(query_ids)
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
            picks = pa.array(rows[chosen])
            table = pa.table(
                {
                    "query_id": id_array.take(picks),
                    "ts": pa.array(ts[rows][chosen], pa.timestamp("us", tz="UTC")),
                    "text": text_array.take(picks),
                    "intent": intent_array.take(picks),
                    "user_id": pa.nulls(int(chosen.sum()), pa.string()),
                    "locale": pa.nulls(int(chosen.sum()), pa.string()),
                    "served": pa.nulls(int(chosen.sum()), pa.string()),
                    "partition": pa.array(np.full(chosen.sum(), p), pa.int32()),
                    "offset": pa.array(offsets[chosen], pa.int64()),
                },
                schema=SCHEMA,
            )
            day_text = datetime.fromtimestamp((start + int(day) * 86_400_000_000) / 1e6, UTC)
            folder = root / f"date={day_text:%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / FlushFile.name(p, first, last, 1, 1))
    return {
        "events": events,
        "resent": resent,
        "distinct_texts": len(set(texts)),
        "distinct_fraction": round(len(set(texts)) / events, 4),
        "synthetic_share": round(synthetic / events, 4),
        "tail_fraction": None if tail is None else round(tail, 4),
    }


def write_champion_master(root: Path, examples: list[Example]) -> None:
    """The dataset's rows once each: the history the registered champion is trained on."""
    write_master(root, examples, len(examples), None, seed=1)


# The retrain's own default split, as the timed child (a fresh process) uses it.
HOLDOUT_FRACTION = BatchSettings.model_fields["holdout_fraction"].default

# Each timed step runs in a fresh process, so its peak RSS is its own; the n-gram counting
# workers it starts (loky processes, still alive) are read from /proc: their CPU time and peak RSS.
_USAGE = """
def usage(cpu_started):
    import psutil
    workers = psutil.Process().children(recursive=True)
    peaks = [0]
    for worker in workers:
        with open(f"/proc/{worker.pid}/status") as status:
            peaks += [int(line.split()[1]) for line in status if line.startswith("VmHWM")]
    spent = sum(t.user + t.system for t in (worker.cpu_times() for worker in workers))
    return {"cpu_seconds": cpu_now() + spent - cpu_started,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "workers_peak_rss_gib": max(peaks) / 2**20}
def cpu_now():
    now = os.times()
    return now.user + now.system
"""

RUN_RETRAIN = f"""
import json, os, resource, sys, time
from pathlib import Path
from common.settings import BatchSettings, MlflowSettings
from pipelines.batch.retrain import retrain
{_USAGE}
master, uri, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
started, cpu_started = time.perf_counter(), cpu_now()
tracking = MlflowSettings(tracking_uri=uri, registered_model=name, experiment=name)
result = retrain(BatchSettings(master_dir=master, lock_path=master / "lock"), tracking, "queries")
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "stages": result.seconds,
                  "promoted": result.promoted, "reason": result.reason,
                  "first_seen_accuracy": result.scores.first_seen_accuracy,
                  "champion_first_seen_accuracy": result.champion_scores.first_seen_accuracy
                      if result.champion_scores else None,
                  "lineage": result.lineage, **usage(cpu_started)}}))
"""

# The model's own fit on the retrain's training rows (already counted, in memory): the baseline
# a retrain is divided by. With a sample share, also the first-seen holdout accuracy of that fit
# and of a fit on a sample of that share of the rows (`pipelines.batch.training_sample`).
BARE_FIT = f"""
import json, os, pickle, resource, sys, time
from models.batch.recipe import build_batch_model, fit_on_counts
{_USAGE}
with open(sys.argv[1], "rb") as handle:
    split = pickle.load(handle)
share = float(sys.argv[2])
started, cpu_started = time.perf_counter(), cpu_now()
model = fit_on_counts(build_batch_model(), split.texts, split.intents, split.weights)
figures = {{"seconds": time.perf_counter() - started, **usage(cpu_started)}}
if share:
    from pipelines.batch.holdout_report import score_holdout
    from pipelines.batch.training_sample import sample_split
    sample = sample_split(split, int(share * len(split.texts)), 0)
    sampled = fit_on_counts(build_batch_model(), sample.texts, sample.intents, sample.weights)
    figures["sampled_fit"] = {{
        "sample_share": share,
        "full_rows": len(split.texts),
        "full_first_seen_accuracy": score_holdout(model, *split.holdout)[0].first_seen_accuracy,
        "sampled_rows": len(sample.texts),
        "sampled_first_seen_accuracy":
            score_holdout(sampled, *split.holdout)[0].first_seen_accuracy,
    }}
print(json.dumps(figures))
"""


def _child(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_fit(scratch: Path, split: HistorySplit, sample_share: float = 0.0) -> dict:
    """The batch model's fit on `split`'s training rows in a fresh process: seconds, CPU, peak
    RSS; with `sample_share`, the sampled fit's first-seen gap too (`BARE_FIT`)."""
    rows = scratch / "bare-fit-rows.pkl"
    with rows.open("wb") as handle:
        pickle.dump(split, handle)
    try:
        figures = _child(BARE_FIT, str(rows), str(sample_share))
    finally:
        rows.unlink()
    sampled = figures.get("sampled_fit")
    if sampled:
        gap = sampled["full_first_seen_accuracy"] - sampled["sampled_first_seen_accuracy"]
        sampled["first_seen_gap_points"] = round(100 * gap, 2)
    return figures


def measure(
    scratch: Path,
    uri: str,
    examples: list[Example],
    events: int,
    distinct: float,
    run: int,
    sample_share: float = 0.0,
) -> dict:
    """One configuration: a registered champion, one timed retrain, one timed bare fit (and,
    with `sample_share`, the sampled fit against the full one)."""
    name = f"bench-{events}-{int(distinct * 100)}pct-{run}"
    master = scratch / name
    stream = write_master(master, examples, events, tail_for(distinct, events, len(examples)), run)
    champion_master = scratch / f"{name}-champion"
    write_champion_master(champion_master, examples)
    _child(RUN_RETRAIN, str(champion_master), uri, name)  # the champion, untimed
    timed = _child(RUN_RETRAIN, str(master), uri, name)
    split = read_history_split(master, archived_positions(master), HOLDOUT_FRACTION)
    bare = bare_fit(scratch, split, sample_share)
    figures = {
        **stream,
        "retrain_seconds": round(timed["seconds"], 2),
        "stages": {k: round(v, 2) for k, v in timed["stages"].items()},
        "bare_fit_seconds": round(bare["seconds"], 2),
        "ratio_vs_bare": round(timed["seconds"] / bare["seconds"], 3),
        "retrain_cpu_seconds": round(timed["cpu_seconds"], 2),
        "bare_fit_cpu_seconds": round(bare["cpu_seconds"], 2),
        "cpu_ratio_vs_bare": round(timed["cpu_seconds"] / bare["cpu_seconds"], 3),
        "peak_rss_gib": round(timed["peak_rss_gib"], 2),
        "workers_peak_rss_gib": round(timed["workers_peak_rss_gib"], 2),
        "bare_fit_peak_rss_gib": round(bare["peak_rss_gib"], 2),
        "distinct_train_texts": int(timed["lineage"]["distinct_train_texts"]),
        "distinct_holdout_texts": int(timed["lineage"]["distinct_holdout_texts"]),
        "vocabulary_size": int(timed["lineage"]["vocabulary_size"]),
        "first_seen_holdout_accuracy": round(timed["first_seen_accuracy"], 4),
        "champion_first_seen_holdout_accuracy": timed["champion_first_seen_accuracy"],
        "promoted": timed["promoted"],
        "gate": timed["reason"],
    }
    if "sampled_fit" in bare:
        figures["sampled_fit"] = bare["sampled_fit"]
    return figures


def _key(events: int, distinct: float) -> str:
    return f"{events / 1_000_000:g}m_{round(distinct * 100)}pct"


def main(
    repeats: int = 1,
    sizes: tuple[int, ...] = SIZES,
    distinct: tuple[float, ...] = DISTINCT,
    engines: tuple[str, ...] = ("local",),
) -> dict:
    """The scale matrix of retrains; with the spark engine among `engines`, the engines'
    comparison and the sampled fit instead (`bench.history_engines`). Figures a run does not
    measure are kept from the result file."""
    from bench import history_engines

    previous = _previous()
    if "spark" in engines:
        kept = _kept_runs({})
        matrix = summarise(previous["clinc150_test_accuracy"], kept) if kept else {}
        figures = history_engines.main(repeats)
        # The sampled fit measured by the scale matrix (at its largest size) is the one kept.
        return save_figures("retrain", figures | matrix, {"repeats": repeats, "engines": engines})
    accuracy = clinc150_accuracy()
    print(f"clinc150_test_accuracy {accuracy:.4f}", flush=True)
    examples = in_scope(("train", "val"))
    largest = (max(sizes), max(distinct))  # where the sampled fit is compared with the full one
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as folder:
        scratch = Path(folder)
        tracking = MlflowSettings(tracking_uri="", port=free_port())
        server = MlflowLauncher(tracking, LocalMlflowSettings(home=scratch / "mlflow"))
        if not server.up():
            raise RuntimeError("the benchmark's own MLflow server did not start")
        try:
            for run in range(repeats):
                for events in sizes:
                    for fraction in distinct:
                        share = SAMPLE_SHARE if (events, fraction) == largest else 0.0
                        figures = measure(
                            scratch, tracking.uri, examples, events, fraction, run, share
                        )
                        figures["provenance"] = provenance({"events": events, "distinct": fraction})
                        runs.setdefault(_key(events, fraction), []).append(figures)
                        print(f"{_key(events, fraction)} run {run + 1}: {figures}", flush=True)
        finally:
            server.down()
    return save_figures(
        "retrain",
        history_engines.kept_figures(previous) | summarise(accuracy, _kept_runs(runs) | runs),
        {"repeats": repeats, "sizes": list(sizes), "distinct": list(distinct)},
    )


def _previous() -> dict:
    path = RESULTS_DIR / "retrain.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _kept_runs(measured: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The configurations of the existing result file that this run did not measure, each
    with the stamp of the run that did: a run of some configurations replaces only those."""
    previous = _previous()
    kept = {key: runs for key, runs in previous.get("runs", {}).items() if key not in measured}
    for runs in kept.values():
        for run in runs:
            run.setdefault("provenance", previous.get("provenance"))
    return kept


def summarise(accuracy: float, runs: dict[str, list[dict]]) -> dict:
    """The required figures at 1M/2M and 30%, then every configuration's medians and runs."""

    def median(key: str, figure: str) -> float | None:
        if key not in runs:
            return None
        return round(statistics.median(r[figure] for r in runs[key]), 3)

    one, two = median("1m_30pct", "retrain_seconds"), median("2m_30pct", "retrain_seconds")
    bare_one, bare_two = (
        median("1m_30pct", "bare_fit_seconds"),
        median("2m_30pct", "bare_fit_seconds"),
    )
    figures: dict = {
        "clinc150_test_accuracy": round(accuracy, 4),
        "seconds_1m_30pct": one,
        "bare_fit_seconds_1m_30pct": bare_one,
        "ratio_vs_bare_1m_30pct": median("1m_30pct", "ratio_vs_bare"),
        "cpu_ratio_vs_bare_1m_30pct": median("1m_30pct", "cpu_ratio_vs_bare"),
        "seconds_2m_30pct": two,
        "bare_fit_seconds_2m_30pct": bare_two,
        "ratio_2m_to_1m_30pct": round(two / one, 3) if one and two else None,
        # 2M and 1M events at 30% hold about 600k and 300k distinct texts.
        "fit_ratio_600k_to_300k_distinct": (
            round(bare_two / bare_one, 3) if bare_one and bare_two else None
        ),
        "peak_rss_gib_1m_30pct": median("1m_30pct", "peak_rss_gib"),
        "workers_peak_rss_gib_1m_30pct": median("1m_30pct", "workers_peak_rss_gib"),
    }
    for key in runs:  # the same figures for every configuration that ran
        figures[f"ratio_vs_bare_{key}"] = median(key, "ratio_vs_bare")
        size, share = key.split("_", 1)
        larger, smaller = median(key, "retrain_seconds"), median(f"1m_{share}", "retrain_seconds")
        if size == "2m" and larger and smaller:
            figures[f"ratio_2m_to_1m_{share}"] = round(larger / smaller, 3)
    with_sample = [key for key in runs if any("sampled_fit" in run for run in runs[key])]
    largest = max(with_sample, key=lambda key: float(key.split("m_")[0]), default="")
    sampled = [run["sampled_fit"] for run in runs.get(largest, []) if "sampled_fit" in run]
    if sampled:  # from the largest history that had one
        gaps = [fit["first_seen_gap_points"] for fit in sampled]
        figures["sampled_fit_first_seen_gap_points"] = round(statistics.median(gaps), 2)
        figures["sampled_fit"] = sampled[-1]
    # The retrain's own peak plus its two counting workers' peaks: a bound on their sum.
    rss = figures["peak_rss_gib_1m_30pct"]
    workers = figures["workers_peak_rss_gib_1m_30pct"] or 0.0
    gap = figures.get("sampled_fit_first_seen_gap_points")
    figures["goal_met"] = {
        "clinc150_test_accuracy >= 0.94": accuracy >= 0.94,
        "seconds_1m_30pct <= 300": (one or 9999) <= 300,
        "ratio_vs_bare_1m_30pct <= 1.3": (figures["ratio_vs_bare_1m_30pct"] or 99) <= 1.3,
        "ratio_2m_to_1m_30pct <= 2.2": (figures["ratio_2m_to_1m_30pct"] or 99) <= 2.2,
        "fit_ratio_600k_to_300k_distinct <= 2.2": (
            (figures["fit_ratio_600k_to_300k_distinct"] or 99) <= 2.2
        ),
        "peak_rss_gib_1m_30pct (with 2 workers) <= 4": (rss or 99) + 2 * workers <= 4,
        "sampled_fit_first_seen_gap_points <= 0.5": abs(gap if gap is not None else 99) <= 0.5,
    }
    figures["configurations"] = {
        key: {
            figure: median(key, figure)
            for figure in (
                "retrain_seconds",
                "bare_fit_seconds",
                "ratio_vs_bare",
                "cpu_ratio_vs_bare",
                "peak_rss_gib",
                "distinct_fraction",
                "synthetic_share",
                "distinct_train_texts",
                "vocabulary_size",
                "first_seen_holdout_accuracy",
            )
        }
        for key in runs
    }
    figures["runs"] = runs
    return figures


if __name__ == "__main__":
    main()
