"""One batch run: the full history up to a cut-off -> train -> evaluate -> MLflow -> registry.

The cut-off is the archived offsets at the start of the run, recorded on the run and on the
registered version, so the speed layer knows exactly which events the new model has seen.
The holdout is split by a hash of the normalised text, so no text sits on both sides and every
version's holdout shares no text with any version's training data. The alias `champion` moves
only if the new version passes the gate of `pipelines.promotion` against the current champion
on that holdout; otherwise it gets `challenger`. A run with nothing archived since the cut-off
of the champion (or the challenger) registers nothing.
"""

import hashlib
import inspect
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from mlflow import MlflowClient

from common.settings import BatchSettings, MlflowSettings
from models.batch_model import build_batch_model, count_examples, fit_on_counts, vocabulary_size
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    TOPIC_TAG,
    TRAINING_TEXTS_ARTIFACT,
    ChampionInfo,
    ChampionModel,
    encode_offsets,
    fetch_alias,
    fetch_champion,
    fluent_mlflow,
    load_champion,
)
from models.texts import in_holdout, text_keys
from pipelines.holdout_report import HoldoutScores, score_holdout, write_report_artifacts
from pipelines.promotion import GateRules, Verdict, compare, first_version
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
    keys: np.ndarray  # `models.texts.text_key` of each training text
    holdout_keys: np.ndarray


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
    verdict: Verdict | None = None


@dataclass(frozen=True)
class HoldoutEvaluation:
    """This run's model and the champion on the holdout, as the run records them."""

    predicted: list[str]
    scores: HoldoutScores
    champion_scores: HoldoutScores | None
    champion_version: str | None


def _content_hash(paths: list[str], cutoff: dict[int, int]) -> str:
    """Archived files are immutable and named by offset range, so their names and the cut-off
    identify the training data exactly."""
    digest = hashlib.sha256(encode_offsets(cutoff).encode())
    for name in sorted(Path(p).name for p in paths):
        digest.update(name.encode())
    return digest.hexdigest()


def _row_ids(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """One int64 per row from (partition, offset): unique across the whole topic."""
    partition = table["partition"].to_numpy().astype(np.int64)
    return (partition << 40) | table["offset"].to_numpy()


def read_history_split(
    master_dir: Path, cutoff: dict[int, int], holdout_fraction: float
) -> HistorySplit:
    """Labelled, de-duplicated history up to `cutoff`, counted into distinct (text, intent)
    rows and split by text hash (`models.texts.in_holdout`), read column-pruned in batches.

    Duplicate query ids are the same event: only the first (lowest partition, offset) counts.
    """
    dataset = history(master_dir, cutoff)
    labelled = pc.field("intent").is_valid()
    events = dataset.to_table(columns=KEY_COLUMNS, filter=labelled)
    if events.num_rows == 0:
        raise NoData(f"no labelled events archived in {master_dir} up to {cutoff}")
    events = events.sort_by([("partition", "ascending"), ("offset", "ascending")])
    repeated = pd.Series(events["query_id"].to_numpy(zero_copy_only=False)).duplicated()
    dropped = _row_ids(events)[repeated.to_numpy()]

    def kept_batches():
        for batch in dataset.to_batches(
            columns=["text", "intent", *KEY_COLUMNS[2:]], filter=labelled
        ):
            keep = ~np.isin(_row_ids(batch), dropped) if len(dropped) else None
            rows = batch.select(["text", "intent"])
            yield rows if keep is None else rows.filter(pa.array(keep))

    texts, intents, weights = count_examples(kept_batches())
    keys = text_keys(texts)
    holdout = in_holdout(keys, holdout_fraction)
    train, held = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    ts = events["ts"]
    lineage = {
        "rows": str(events.num_rows - len(dropped)),
        "duplicates_dropped": str(len(dropped)),
        "train_rows": str(int(weights[train].sum())),
        "holdout_rows": str(int(weights[held].sum())),
        "distinct_train_texts": str(len(train)),
        "distinct_holdout_texts": str(len(held)),
        "holdout_split": f"text hash, fraction {holdout_fraction}",
        "ts_min": pc.min(ts).as_py().isoformat(),
        "ts_max": pc.max(ts).as_py().isoformat(),
        "cutoff_offsets": encode_offsets(cutoff),
        "content_hash": _content_hash(dataset.files, cutoff),
    }
    return HistorySplit(
        [texts[i] for i in train],
        [intents[i] for i in train],
        weights[train],
        [texts[i] for i in held],
        [intents[i] for i in held],
        weights[held],
        lineage,
        keys[train],
        keys[held],
    )


PIP_REQUIREMENTS = [
    f"scikit-learn=={installed_version('scikit-learn')}",
    f"numpy=={installed_version('numpy')}",
    f"scipy=={installed_version('scipy')}",
]


def _gate(
    split: HistorySplit,
    scores: HoldoutScores,
    right: np.ndarray,
    champion: ChampionModel | None,
    batch: BatchSettings,
) -> tuple[Verdict, HoldoutScores | None]:
    """The gate's verdict on this run's model, and the champion's scores on the same holdout.

    Holdout texts the champion trained on (possible only if the holdout fraction changed since
    it was trained) are left out of the paired comparison, so it is first-seen for both.
    """
    if champion is None:
        return first_version(scores.first_seen_accuracy, batch.min_accuracy), None
    holdout = (split.holdout_texts, split.holdout_intents, split.holdout_weights)
    champion_scores, _, champion_right = score_holdout(champion.estimator, *holdout)
    fresh = np.ones(len(split.holdout_texts), dtype=bool)
    if champion.training_texts is not None:
        fresh = ~champion.training_texts.contains_keys(split.holdout_keys)
    intents = [i for i, keep in zip(split.holdout_intents, fresh, strict=True) if keep]
    verdict = compare(right[fresh], champion_right[fresh], intents, GateRules.of(batch))
    return verdict, champion_scores


class NothingNew(RuntimeError):
    """Nothing has been archived since the cut-off of a registered version: a run would only
    register the same model again."""


def _nothing_new_since(client: MlflowClient, name: str, cutoff: dict[int, int]) -> str | None:
    """Which registered version (champion or challenger) already covers exactly `cutoff`."""
    for alias in (CHAMPION, CHALLENGER):
        info = fetch_alias(client, name, alias)
        if info is not None and info.cutoff_offsets == cutoff:
            return f"{alias} version {info.version}"
    return None


def retrain(
    batch: BatchSettings,
    tracking: MlflowSettings,
    topic: str,
    model_params: dict | None = None,
    label_shuffle_seed: int | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> RetrainResult:
    """One batch run, tracked and registered; raises on failure with the champion untouched,
    and `NothingNew` (registering nothing) when the history has not grown since the cut-off of
    the champion or the challenger.

    `label_shuffle_seed` shuffles the training labels: a deliberately broken model, used to show
    that the promotion gate holds. `on_stage` hears "read", "fit", "evaluate" and "log" as each
    stage begins (progress for people, and a place for tests to break things).
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    on_stage("read")
    client = tracking_client(tracking)
    cutoff = archived_positions(batch.master_dir)
    covered = _nothing_new_since(client, tracking.registered_model, cutoff)
    if covered is not None:
        raise NothingNew(f"nothing archived since the cut-off of {covered}: nothing registered")
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
    split = replace(split, lineage=split.lineage | {"vocabulary_size": str(vocabulary_size(model))})

    on_stage("evaluate")
    mark = time.perf_counter()
    holdout = (split.holdout_texts, split.holdout_intents, split.holdout_weights)
    scores, predicted, right = score_holdout(model, *holdout)
    champion = _current_champion(client, tracking.registered_model)
    verdict, champion_scores = _gate(split, scores, right, champion, batch)
    seconds["evaluate"] = time.perf_counter() - mark

    on_stage("log")
    mark = time.perf_counter()
    run_id, version = _log_run(
        client,
        tracking,
        batch,
        split,
        model,
        HoldoutEvaluation(
            predicted, scores, champion_scores, champion.info.version if champion else None
        ),
        verdict,
        topic,
        model_params,
        label_shuffle_seed,
    )
    _tag_version(client, tracking.registered_model, version, cutoff, topic, split, scores)
    alias = CHAMPION if verdict.promote else CHALLENGER
    client.set_registered_model_alias(tracking.registered_model, alias, version)
    seconds["mlflow"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    log.info("version %s (%s): %s", version, alias, verdict.reason)
    return RetrainResult(
        run_id,
        version,
        verdict.promote,
        verdict.reason,
        scores,
        champion_scores,
        split.lineage,
        seconds,
        verdict,
    )


def _current_champion(client: MlflowClient, name: str) -> ChampionModel | None:
    info: ChampionInfo | None = fetch_champion(client, name)
    return load_champion(info, with_training_texts=True) if info else None


def _log_run(
    client: MlflowClient,
    tracking: MlflowSettings,
    batch: BatchSettings,
    split: HistorySplit,
    model,
    evaluation: HoldoutEvaluation,
    verdict: Verdict,
    topic: str,
    model_params: dict | None,
    label_shuffle_seed: int | None,
) -> tuple[str, str]:
    """One MLflow run with lineage, parameters, scores, the gate's figures, the report
    artifacts, the training texts' keys and the registered model; returns (run id, version)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    with (
        fluent_mlflow(tracking.uri),
        mlflow.start_run(
            experiment_id=experiment_id(client, tracking.experiment), run_name="batch-retrain"
        ) as run,
    ):
        mlflow.set_tags({f"lineage.{k}": v for k, v in split.lineage.items()} | {"topic": topic})
        rules = GateRules.of(batch)
        mlflow.log_params(
            {"holdout_fraction": batch.holdout_fraction, "label_shuffle_seed": label_shuffle_seed}
            | {f"gate.{k}": v for k, v in asdict(rules).items()}
            | {f"model.{k}": v for k, v in _factory_params(model_params).items()}
        )
        mlflow.log_metrics(evaluation.scores.as_metrics("holdout_") | verdict.as_metrics())
        if evaluation.champion_scores and evaluation.champion_version:
            mlflow.log_metrics(evaluation.champion_scores.as_metrics("champion_holdout_"))
            mlflow.set_tag("compared_with_version", evaluation.champion_version)
        with tempfile.TemporaryDirectory() as folder:
            reports = write_report_artifacts(
                Path(folder), split.holdout_intents, evaluation.predicted
            )
            for path in reports:
                mlflow.log_artifact(str(path), artifact_path="report")
            keys_path = Path(folder) / Path(TRAINING_TEXTS_ARTIFACT).name
            np.save(keys_path, np.unique(split.keys))
            artifact_folder = str(Path(TRAINING_TEXTS_ARTIFACT).parent)
            mlflow.log_artifact(str(keys_path), artifact_path=artifact_folder)
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
        outcome = "champion" if verdict.promote else "challenger"
        mlflow.set_tag("promotion", f"{outcome}: {verdict.reason}")
        return run.info.run_id, str(logged.registered_model_version)


def _tag_version(
    client: MlflowClient,
    name: str,
    version: str,
    cutoff: dict[int, int],
    topic: str,
    split: HistorySplit,
    scores: HoldoutScores,
) -> None:
    """The facts the speed layer and serving read off a version without opening its run."""
    client.set_model_version_tag(name, version, CUTOFF_TAG, encode_offsets(cutoff))
    client.set_model_version_tag(name, version, TOPIC_TAG, topic)
    client.set_model_version_tag(name, version, "content_hash", split.lineage["content_hash"])
    accuracy = f"{scores.first_seen_accuracy:.4f}"
    client.set_model_version_tag(name, version, "holdout_first_seen_accuracy", accuracy)


def _factory_params(overrides: dict | None) -> dict:
    """The batch model's factory arguments as used: its defaults, then the overrides."""
    defaults = inspect.signature(build_batch_model).parameters.items()
    return {name: parameter.default for name, parameter in defaults} | (overrides or {})
