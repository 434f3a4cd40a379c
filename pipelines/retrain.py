"""One batch run: the full history up to a cut-off -> train -> evaluate -> MLflow -> registry.

The cut-off is the archived offsets at the start of the run, recorded on the run and on the
registered version, so the speed layer knows exactly which events the new model has seen.
The newest slice of the history (by event time) is the holdout, never a random split. The
alias `champion` moves only if the new version beats the current champion on that holdout.
"""

import hashlib
import inspect
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from mlflow import MlflowClient

from models.batch_model import build_batch_model, count_examples, fit_on_counts
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    TOPIC_TAG,
    ChampionInfo,
    ChampionModel,
    encode_offsets,
    fetch_champion,
    fluent_mlflow,
    load_champion,
)
from pipelines.config import BatchSettings, MlflowSettings
from pipelines.holdout_report import HoldoutScores, score_holdout, write_report_artifacts
from pipelines.tracking import experiment_id, tracking_client
from streams.master_dataset import archived_positions, history

log = logging.getLogger(__name__)

KEY_COLUMNS = ["query_id", "ts", "partition", "offset"]


class NoData(RuntimeError):
    """The master dataset has too little labelled history to train on."""


@dataclass(frozen=True)
class HistorySplit:
    """Train counts and the holdout of one run, with the lineage of the data behind them."""

    texts: list[str]
    intents: list[str]
    weights: np.ndarray
    holdout_texts: list[str]
    holdout_intents: list[str]
    holdout_weights: np.ndarray
    lineage: dict[str, str]


@dataclass
class RetrainResult:
    run_id: str
    version: str
    promoted: bool
    reason: str
    scores: HoldoutScores
    champion_scores: HoldoutScores | None
    lineage: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)


def _content_hash(paths: list[str], cutoff: dict[int, int]) -> str:
    """Archived files are immutable and named by offset range, so their names and the cut-off
    identify the training data exactly."""
    digest = hashlib.sha256(encode_offsets(cutoff).encode())
    for name in sorted(Path(p).name for p in paths):
        digest.update(name.encode())
    return digest.hexdigest()


def _holdout_threshold(keys: pa.Table, fraction: float) -> tuple[int, int, int]:
    """The (ts, partition, offset) key from which the newest `fraction` of events begins."""
    ts = keys["ts"].cast(pa.int64()).to_numpy()
    partition = keys["partition"].to_numpy()
    offset = keys["offset"].to_numpy()
    order = np.lexsort((offset, partition, ts))
    start = order[min(len(order) - 1, int(len(order) * (1 - fraction)))]
    return int(ts[start]), int(partition[start]), int(offset[start])


def _is_holdout(batch: pa.RecordBatch, threshold: tuple[int, int, int]) -> np.ndarray:
    ts = batch["ts"].cast(pa.int64()).to_numpy()
    partition = batch["partition"].to_numpy()
    offset = batch["offset"].to_numpy()
    t, p, o = threshold
    return (ts > t) | ((ts == t) & ((partition > p) | ((partition == p) & (offset >= o))))


def _row_ids(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """One int64 per row from (partition, offset): unique across the whole topic."""
    partition = table["partition"].to_numpy().astype(np.int64)
    return (partition << 40) | table["offset"].to_numpy()


def read_history_split(
    master_dir: Path, cutoff: dict[int, int], holdout_fraction: float
) -> HistorySplit:
    """Labelled, de-duplicated history up to `cutoff`, split by time, read column-pruned in batches.

    Duplicate query ids are the same event: only the first (lowest partition, offset) counts.
    """
    dataset = history(master_dir, cutoff)
    labelled = pc.field("intent").is_valid()
    keys = dataset.to_table(columns=KEY_COLUMNS, filter=labelled)
    if keys.num_rows == 0:
        raise NoData(f"no labelled events archived in {master_dir} up to {cutoff}")
    keys = keys.sort_by([("partition", "ascending"), ("offset", "ascending")])
    repeated = pd.Series(keys["query_id"].to_numpy(zero_copy_only=False)).duplicated().to_numpy()
    dropped = _row_ids(keys)[repeated]
    keys = keys.filter(pa.array(~repeated))
    threshold = _holdout_threshold(keys, holdout_fraction)
    holdout_parts: list[pa.Table] = []

    def train_batches():
        columns = ["text", "intent", *KEY_COLUMNS[1:]]
        for batch in dataset.to_batches(columns=columns, filter=labelled):
            keep = ~np.isin(_row_ids(batch), dropped)
            holdout = _is_holdout(batch, threshold)
            holdout_parts.append(pa.Table.from_batches([batch.filter(pa.array(holdout & keep))]))
            yield batch.select(["text", "intent"]).filter(pa.array(~holdout & keep))

    texts, intents, weights = count_examples(train_batches())
    holdout_texts, holdout_intents, holdout_weights = count_examples(holdout_parts)
    ts = keys["ts"]
    lineage = {
        "rows": str(keys.num_rows),
        "duplicates_dropped": str(len(dropped)),
        "train_rows": str(int(weights.sum())),
        "holdout_rows": str(int(holdout_weights.sum())),
        "distinct_train_texts": str(len(texts)),
        "ts_min": pc.min(ts).as_py().isoformat(),
        "ts_max": pc.max(ts).as_py().isoformat(),
        "cutoff_offsets": encode_offsets(cutoff),
        "content_hash": _content_hash(dataset.files, cutoff),
    }
    return HistorySplit(
        texts, intents, weights, holdout_texts, holdout_intents, holdout_weights, lineage
    )


PIP_REQUIREMENTS = [
    f"scikit-learn=={installed_version('scikit-learn')}",
    f"numpy=={installed_version('numpy')}",
    f"scipy=={installed_version('scipy')}",
]


def _decide(
    scores: HoldoutScores, champion_scores: HoldoutScores | None, min_accuracy: float
) -> tuple[bool, str]:
    """Promote or not, and why, in words that go on the run."""
    if champion_scores is None:
        verdict = scores.accuracy >= min_accuracy
        relation = ">=" if verdict else "<"
        return verdict, f"first version: accuracy {scores.accuracy:.4f} {relation} {min_accuracy}"
    comparison = (
        f"accuracy {scores.accuracy:.4f} vs {champion_scores.accuracy:.4f}, "
        f"log loss {scores.log_loss:.4f} vs {champion_scores.log_loss:.4f}"
    )
    if scores.beats(champion_scores):
        return True, f"beats the champion on the same holdout: {comparison}"
    return False, f"does not beat the champion on the same holdout: {comparison}"


def _current_champion(client: MlflowClient, name: str) -> ChampionModel | None:
    info: ChampionInfo | None = fetch_champion(client, name)
    return load_champion(info) if info else None


def retrain(
    batch: BatchSettings,
    tracking: MlflowSettings,
    topic: str,
    model_params: dict | None = None,
    label_shuffle_seed: int | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> RetrainResult:
    """One batch run, tracked and registered; raises on failure with the champion untouched.

    `label_shuffle_seed` shuffles the training labels: a deliberately broken model, used to show
    that the promotion gate holds. `on_stage` hears "read", "fit", "evaluate" and "log" as each
    stage begins (progress for people, and a place for tests to break things).
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    on_stage("read")
    cutoff = archived_positions(batch.master_dir)
    split = read_history_split(batch.master_dir, cutoff, batch.holdout_fraction)
    if int(split.weights.sum()) < batch.min_train_events:
        found = int(split.weights.sum())
        raise NoData(f"only {found} labelled training events; need {batch.min_train_events}")
    intents = split.intents
    if label_shuffle_seed is not None:
        intents = list(np.random.default_rng(label_shuffle_seed).permutation(np.asarray(intents)))
    seconds["read"] = time.perf_counter() - started

    on_stage("fit")
    mark = time.perf_counter()
    model = build_batch_model(**(model_params or {}))
    fit_on_counts(model, split.texts, intents, split.weights)
    seconds["fit"] = time.perf_counter() - mark

    on_stage("evaluate")
    mark = time.perf_counter()
    holdout = (split.holdout_texts, split.holdout_intents, split.holdout_weights)
    scores, predicted = score_holdout(model, *holdout)
    client = tracking_client(tracking)
    champion = _current_champion(client, tracking.registered_model)
    champion_scores = score_holdout(champion.estimator, *holdout)[0] if champion else None
    promote, reason = _decide(scores, champion_scores, batch.min_accuracy)
    seconds["evaluate"] = time.perf_counter() - mark

    on_stage("log")
    mark = time.perf_counter()
    with (
        fluent_mlflow(tracking.uri),
        mlflow.start_run(
            experiment_id=experiment_id(client, tracking.experiment), run_name="batch-retrain"
        ) as run,
    ):
        mlflow.set_tags({f"lineage.{k}": v for k, v in split.lineage.items()} | {"topic": topic})
        mlflow.log_params(
            {"holdout_fraction": batch.holdout_fraction, "label_shuffle_seed": label_shuffle_seed}
            | {f"model.{k}": v for k, v in _factory_params(model_params).items()}
        )
        mlflow.log_metrics(scores.as_metrics("holdout_"))
        if champion_scores and champion:
            mlflow.log_metrics(champion_scores.as_metrics("champion_holdout_"))
            mlflow.set_tag("compared_with_version", champion.info.version)
        with tempfile.TemporaryDirectory() as folder:
            for path in write_report_artifacts(Path(folder), *holdout[1:], predicted):
                mlflow.log_artifact(str(path), artifact_path="report")
        example = split.holdout_texts[:3] or split.texts[:3]
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=tracking.registered_model,
            serialization_format="cloudpickle",  # skops refuses the project's own estimators
        )
        version = str(logged.registered_model_version)
        mlflow.set_tag("promotion", f"{'champion' if promote else 'challenger'}: {reason}")
        run_id = run.info.run_id
    name = tracking.registered_model
    client.set_model_version_tag(name, version, CUTOFF_TAG, encode_offsets(cutoff))
    client.set_model_version_tag(name, version, TOPIC_TAG, topic)
    client.set_model_version_tag(name, version, "content_hash", split.lineage["content_hash"])
    client.set_model_version_tag(name, version, "holdout_accuracy", f"{scores.accuracy:.4f}")
    client.set_registered_model_alias(name, CHAMPION if promote else CHALLENGER, version)
    seconds["mlflow"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    log.info("version %s: %s", version, reason)
    return RetrainResult(
        run_id, version, promote, reason, scores, champion_scores, split.lineage, seconds
    )


def _factory_params(overrides: dict | None) -> dict:
    """The batch model's factory arguments as used: its defaults, then the overrides."""
    defaults = inspect.signature(build_batch_model).parameters.items()
    return {name: parameter.default for name, parameter in defaults} | (overrides or {})
