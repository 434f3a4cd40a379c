"""One batch run: the full history up to a cut-off -> train -> evaluate -> MLflow -> registry.

The cut-off is the archived offsets of both topics (queries and labels) at the start of the
run, recorded on the run and on the registered version, so the speed layer knows exactly which
events the new model has seen.
The holdout is split by a hash of the normalised text, so no text sits on both sides and every
version's holdout shares no text with any version's training data. The alias `champion` moves
only if the new version passes the gate of `pipelines.batch.promotion` against the current champion
on that holdout; otherwise it gets `challenger`. A run whose history and model are both those of
the champion (or the challenger), nothing archived since its cut-off and the same model spec,
registers nothing unless forced; another model, or other parameters, on the same history is
something new, and goes through the gate like new data does.

The model is the one `BatchSettings.model` and `model_params` choose (`BATCH_MODEL`,
`BATCH_MODEL_PARAMS`), made ready by `models.batch.recipe.prepare_batch_model`. It is
registered as a pyfunc model that loads without this repository (`models.pyfunc_model`), its
spec tagged on the version. The run logs the training rows and the holdout as MLflow datasets
("history" and "holdout"), which the tracking UI shows beside each run.

The pass over the history runs on the engine `BatchSettings.engine` names
(`pipelines.batch.history`: in this process, or as a Spark job); the run records the engine and,
when the training rows were too many for the fit, the sample it took
(`pipelines.batch.training_sample`).
"""

import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from common.settings import BatchSettings, MlflowSettings, StorageSettings
from common.storage import Location
from models.batch.distinct_rows import DistinctRowsClassifier
from models.batch.recipe import fit_on_counts, prepare_batch_model, vocabulary_size
from models.model_spec import ModelSpec
from models.pyfunc_model import log_intent_model
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    FEEDBACK_CUTOFF_TAG,
    MODEL_SPEC_TAG,
    TOPIC_TAG,
    TRAINING_TEXTS_ARTIFACT,
    ChampionInfo,
    ChampionModel,
    alias_version,
    decode_offsets,
    encode_offsets,
    fetch_champion,
    fluent_mlflow,
    load_champion,
    trained_alike,
)
from pipelines.batch.counts import HistorySplit, NoData, split_counts
from pipelines.batch.history import count_history
from pipelines.batch.holdout_report import HoldoutScores, score_holdout, write_report_artifacts
from pipelines.batch.promotion import GateRules, Verdict, compare, first_version
from pipelines.batch.training_sample import sample_split
from pipelines.tracking import experiment_id, tracking_client
from streams.master_dataset import Cutoff, archived_cutoff

log = logging.getLogger(__name__)


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
    """This run's model and the champion on the holdout, and the gate's verdict, as the run
    records them."""

    predicted: list[str]
    scores: HoldoutScores
    champion_scores: HoldoutScores | None
    champion_version: str | None
    verdict: Verdict


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
    champion_scores, _, champion_right = score_holdout(champion.estimator, *split.holdout)
    fresh = np.ones(len(split.holdout_texts), dtype=bool)
    if champion.training_texts is not None:
        fresh = ~champion.training_texts.contains_keys(split.holdout_keys)
    intents = [i for i, keep in zip(split.holdout_intents, fresh, strict=True) if keep]
    verdict = compare(right[fresh], champion_right[fresh], intents, GateRules.of(batch))
    return verdict, champion_scores


class NothingNew(RuntimeError):
    """Nothing has been archived since the cut-off of a registered version, whose model has the
    same spec: a run would only register the same model again."""


def _refuse_if_nothing_new(
    client: MlflowClient, name: str, cutoff: Cutoff, spec: ModelSpec
) -> None:
    """Raise `NothingNew` if a registered version (champion or challenger) was already trained
    on exactly `cutoff` by the model `spec` builds: registering again would only repeat it."""
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(client, name, alias)
        if (
            version is not None
            and trained_alike(version.tags, cutoff.queries, spec)
            and decode_offsets(version.tags.get(FEEDBACK_CUTOFF_TAG)) == cutoff.feedback
        ):
            raise NothingNew(
                f"nothing archived since the cut-off of {alias} version {version.version}, "
                f"which has the same model ({spec.describe()}): nothing registered"
            )


def retrain(
    batch: BatchSettings,
    tracking: MlflowSettings,
    topic: str,
    label_shuffle_seed: int | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    storage: StorageSettings | None = None,
    force: bool = False,
) -> RetrainResult:
    """One batch run, tracked and registered; raises on failure with the champion untouched,
    and `NothingNew` (registering nothing) when the champion or the challenger was trained on
    this very history by this very model spec, unless `force`.

    The model is built from `batch.model` and `batch.model_params`; a spec that cannot be
    built (`models.model_spec.ModelSpecError`) or a model that breaks the batch contract
    (`models.contracts.ModelContractError`) fails the run before anything is read.
    `label_shuffle_seed` shuffles the training labels: a deliberately broken model, used to show
    that the promotion gate holds. `on_stage` hears "read", "fit", "evaluate" and "log" as each
    stage begins (progress for people, and a place for tests to break things).
    """
    stages = _Stages(on_stage)
    name = tracking.registered_model
    spec = ModelSpec.parse(batch.model, batch.model_params)
    model, notes = prepare_batch_model(spec.build(), where=f"the batch model {spec.factory}")
    asked = _Request(batch, topic, spec, label_shuffle_seed)
    with stages.run("read"):
        client = tracking_client(tracking)
        cutoff = archived_cutoff(batch.master_dir, storage)
        if not force:
            _refuse_if_nothing_new(client, name, cutoff, spec)
        split = _read_training_history(batch, cutoff, storage)
        intents = _training_intents(split, label_shuffle_seed)
    with stages.run("fit"):
        split = _fit(model, split, intents)
    with stages.run("evaluate"):
        scores, predicted, right = score_holdout(model, *split.holdout)
        champion = _current_champion(client, name)
        verdict, champion_scores = _gate(split, scores, right, champion, batch)
        compared = champion.info.version if champion else None
        evaluation = HoldoutEvaluation(predicted, scores, champion_scores, compared, verdict)
    with stages.run("log", timed_as="mlflow"):
        run_id, version = _log_run(client, tracking, split, model, evaluation, asked, notes)
        alias = _register(client, name, version, cutoff, asked, split, evaluation)
    log.info("version %s (%s): %s", version, alias, verdict.reason)
    return RetrainResult(
        run_id,
        version,
        verdict.promote,
        verdict.reason,
        scores,
        champion_scores,
        split.lineage,
        stages.seconds_with_total(),
        verdict,
    )


class _Stages:
    """Announces each stage of a run to `on_stage` and times it, so `retrain` reads as its
    recipe and not as a stopwatch."""

    def __init__(self, on_stage: Callable[[str], None]) -> None:
        self.on_stage = on_stage
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def run(self, stage: str, timed_as: str | None = None) -> Iterator[None]:
        """Announce `stage`, then time it into `seconds` (under `timed_as`, if given)."""
        self.on_stage(stage)
        mark = time.perf_counter()
        yield
        self.seconds[timed_as or stage] = time.perf_counter() - mark

    def seconds_with_total(self) -> dict[str, float]:
        """Each stage's seconds and the whole run's, under "total"."""
        return self.seconds | {"total": time.perf_counter() - self._started}


def _read_training_history(
    batch: BatchSettings, cutoff: Cutoff, storage: StorageSettings | None = None
) -> HistorySplit:
    """The history split up to `cutoff`, counted by `batch.engine`, its training rows sampled
    down to `batch.max_distinct_rows` if there are more; raises `NoData` if it has fewer
    training events than `batch.min_train_events`, too few to train on."""
    split = split_counts(count_history(batch, cutoff, storage), batch.holdout_fraction)
    found = int(split.weights.sum())
    if found < batch.min_train_events:
        raise NoData(f"only {found} labelled training events; need {batch.min_train_events}")
    return sample_split(split, batch.max_distinct_rows, batch.sample_seed)


def _training_intents(split: HistorySplit, label_shuffle_seed: int | None) -> list[str]:
    """The labels to train on: the split's own, or shuffled with `label_shuffle_seed` to make
    the deliberately broken model that shows the gate holds."""
    if label_shuffle_seed is None:
        return split.intents
    return list(np.random.default_rng(label_shuffle_seed).permutation(np.asarray(split.intents)))


def _fit(model: DistinctRowsClassifier, split: HistorySplit, intents: list[str]) -> HistorySplit:
    """Fit `model` on the split's training counts; the split with the model's vocabulary size
    added to its lineage (it goes on the run with the rest)."""
    fit_on_counts(model, split.texts, intents, split.weights)
    vocabulary = {"vocabulary_size": str(vocabulary_size(model))}
    return replace(split, lineage=split.lineage | vocabulary)


def _register(
    client: MlflowClient,
    name: str,
    version: str,
    cutoff: Cutoff,
    asked: "_Request",
    split: HistorySplit,
    evaluation: HoldoutEvaluation,
) -> str:
    """Tag the new version and give it its alias: `champion` if it passed the gate, else
    `challenger`; returns the alias. Serving and the speed layer follow `champion`."""
    _tag_version(client, name, version, cutoff, asked, split, evaluation.scores)
    alias = CHAMPION if evaluation.verdict.promote else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    return alias


def _current_champion(client: MlflowClient, name: str) -> ChampionModel | None:
    """The registry's champion, loaded with its training texts (the gate leaves those out of
    the comparison), or None before the first one."""
    info: ChampionInfo | None = fetch_champion(client, name)
    return load_champion(info, with_training_texts=True) if info else None


@dataclass(frozen=True)
class _Request:
    """What one `retrain` call asked for, as its run records it."""

    batch: BatchSettings
    topic: str
    spec: ModelSpec
    label_shuffle_seed: int | None

    def params(self) -> dict:
        """The run's parameters: the holdout fraction, the label shuffle seed, the gate's rules
        and the model's spec (its factory, and the arguments given to it as JSON)."""
        rules = GateRules.of(self.batch)
        return (
            {
                "holdout_fraction": self.batch.holdout_fraction,
                "label_shuffle_seed": self.label_shuffle_seed,
            }
            | {f"gate.{k}": v for k, v in asdict(rules).items()}
            | {
                "model.factory": self.spec.factory,
                "model.params": json.dumps(dict(self.spec.params), sort_keys=True),
            }
        )


def estimator_params(model: DistinctRowsClassifier) -> dict[str, str]:
    """The fitted model's own parameters as a run records them: the wrapped estimator's
    `get_params(deep=True)`, flattened, under `estimator.`, estimators themselves left out
    (their parameters are there), values as text cut to MLflow's limit.

    >>> from sklearn.linear_model import LogisticRegression
    >>> estimator_params(DistinctRowsClassifier(LogisticRegression(C=2.0)))["estimator.C"]
    '2.0'
    """
    params = model.estimator.get_params(deep=True)
    return {
        f"estimator.{key}": str(value)[:MAX_PARAM_VAL_LENGTH]
        for key, value in sorted(params.items())
        if not hasattr(value, "get_params")
    }


def _log_run(
    client: MlflowClient,
    tracking: MlflowSettings,
    split: HistorySplit,
    model: DistinctRowsClassifier,
    evaluation: HoldoutEvaluation,
    asked: _Request,
    notes: list[str],
) -> tuple[str, str]:
    """One MLflow run with lineage, parameters (the run's and the estimator's), scores, the
    gate's figures, the report artifacts, the training texts' keys and the registered model;
    returns (run id, version). `notes` (how the model was made ready) go in the `model.notes`
    tag."""
    import mlflow

    with (
        fluent_mlflow(tracking.uri),
        mlflow.start_run(
            experiment_id=experiment_id(client, tracking.experiment), run_name="batch-retrain"
        ) as run,
    ):
        lineage = {f"lineage.{k}": v for k, v in split.lineage.items()}
        mlflow.set_tags(lineage | {"topic": asked.topic})
        _log_datasets(split, asked.batch.master_dir)
        mlflow.log_params(asked.params() | estimator_params(model))
        if notes:
            mlflow.set_tag("model.notes", "; ".join(notes))
        verdict = evaluation.verdict
        mlflow.log_metrics(evaluation.scores.as_metrics("holdout_") | verdict.as_metrics())
        if evaluation.champion_scores and evaluation.champion_version:
            mlflow.log_metrics(evaluation.champion_scores.as_metrics("champion_holdout_"))
            mlflow.set_tag("compared_with_version", evaluation.champion_version)
        _log_artifacts(split, evaluation.predicted)
        version = _log_model(model, split, tracking.registered_model)
        outcome = "champion" if verdict.promote else "challenger"
        mlflow.set_tag("promotion", f"{outcome}: {verdict.reason}")
        return run.info.run_id, version


def rows_digest(texts: list[str], intents: list[str], counts: np.ndarray) -> str:
    """A short digest of distinct (text, intent, count) rows, the same for the same rows in the
    same order: how MLflow tells one dataset from another.

    >>> twice, thrice = np.array([2.0]), np.array([3.0])
    >>> rows_digest(["hi"], ["greet"], twice) == rows_digest(["hi"], ["greet"], thrice)
    False
    """
    digest = hashlib.sha256()
    for column in (texts, intents):
        digest.update("\n".join(column).encode())
        digest.update(b"\0")
    digest.update(np.asarray(counts, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _log_datasets(split: HistorySplit, master: Location) -> None:
    """The training rows ("history", context "training") and the holdout ("holdout", context
    "evaluation") as MLflow datasets of the active run: each a table of distinct (text, intent,
    count) rows with its digest (`rows_digest`), its source the master dataset. MLflow keeps
    their name, digest, schema and size, not the rows."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    source = str(master) if "://" in str(master) else str(Path(master).resolve())
    tables = (
        ("history", "training", (split.texts, split.intents, split.weights)),
        ("holdout", "evaluation", split.holdout),
    )
    for name, context, (texts, intents, counts) in tables:
        frame = pd.DataFrame({"text": texts, "intent": intents, "count": counts})
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice, then warns that a path is ambiguous.
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            dataset = from_pandas(
                frame,
                source,
                targets="intent",
                name=name,
                digest=rows_digest(texts, intents, counts),
            )
        mlflow.log_input(dataset, context=context)


def _log_artifacts(split: HistorySplit, predicted: list[str]) -> None:
    """The holdout report and the training texts' keys, on the active run: the keys let the
    next run leave the texts this version trained on out of its comparison."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        for path in write_report_artifacts(Path(folder), split.holdout_intents, predicted):
            mlflow.log_artifact(str(path), artifact_path="report")
        keys_path = Path(folder) / Path(TRAINING_TEXTS_ARTIFACT).name
        np.save(keys_path, np.unique(split.keys))
        artifact_folder = str(Path(TRAINING_TEXTS_ARTIFACT).parent)
        mlflow.log_artifact(str(keys_path), artifact_path=artifact_folder)


def _log_model(model, split: HistorySplit, registered_model: str) -> str:
    """The model on the active run as a pyfunc model (`models.pyfunc_model`), registered under
    `registered_model`; returns the version."""
    example = split.holdout_texts[:3] or split.texts[:3]
    logged = log_intent_model(model, example, registered_model_name=registered_model)
    return str(logged.registered_model_version)


def _tag_version(
    client: MlflowClient,
    name: str,
    version: str,
    cutoff: Cutoff,
    asked: _Request,
    split: HistorySplit,
    scores: HoldoutScores,
) -> None:
    """The facts the speed layer, serving and the next retrain read off a version without
    opening its run."""
    client.set_model_version_tag(name, version, CUTOFF_TAG, encode_offsets(cutoff.queries))
    feedback = encode_offsets(cutoff.feedback)
    client.set_model_version_tag(name, version, FEEDBACK_CUTOFF_TAG, feedback)
    client.set_model_version_tag(name, version, TOPIC_TAG, asked.topic)
    client.set_model_version_tag(name, version, MODEL_SPEC_TAG, asked.spec.as_json())
    client.set_model_version_tag(name, version, "content_hash", split.lineage["content_hash"])
    accuracy = f"{scores.first_seen_accuracy:.4f}"
    client.set_model_version_tag(name, version, "holdout_first_seen_accuracy", accuracy)
