"""The batch layer against the real MLflow server: lineage, promotion gate, failures, the lock,
and models chosen by configuration."""

import json
import random
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from common.settings import BatchSettings, MlflowSettings
from models.champion_watch import ChampionWatch, RegistryChampions
from models.model_spec import ModelSpec
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    MODEL_SPEC_TAG,
    decode_offsets,
    fetch_alias,
    fetch_champion,
    load_champion,
)
from pipelines.batch.history import read_history_split
from pipelines.batch.retrain import NothingNew, retrain
from pipelines.batch.retrain_task import SKIPPED_EXIT_CODE
from pipelines.cli.main import app
from pipelines.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING
from streams.archiver import write_flush
from streams.consumer import Consumed
from streams.dataset import CLINC150_DATA, load_dataset
from streams.master_dataset import archived_positions
from streams.schema import QueryEvent
from tests.integration.cli_processes import CLI, cli_env
from tests.integration.conftest import throwaway_mlflow

pytestmark = pytest.mark.integration

INTENTS = 25


def clinc_rows(intents: int = INTENTS, per_intent: int | None = None, seed: int = 1) -> list:
    """CLINC150 rows of the first `intents` in-scope intents (`per_intent` of each), shuffled."""
    examples = load_dataset(CLINC150_DATA).examples
    chosen = sorted({e.intent for e in examples if e.intent != "oos"})[:intents]
    by_intent = {intent: [e for e in examples if e.intent == intent] for intent in chosen}
    rows = [e for intent in chosen for e in by_intent[intent][:per_intent]]
    random.Random(seed).shuffle(rows)
    return rows


def archive(root, rows, start_offsets: dict[int, int] | None = None) -> dict[int, int]:
    """Archive `rows` over two partitions after `start_offsets`, one flush per partition, as
    the archiver would; returns the next offset of each partition."""
    offsets = dict(start_offsets or {0: 0, 1: 0})
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for partition in (0, 1):
        part = rows[partition::2]
        if not part:
            continue
        first = offsets[partition]
        consumed = [
            Consumed(
                QueryEvent(
                    query_id=f"{partition}-{first + n}",
                    ts=start + timedelta(minutes=first + n),
                    text=example.text,
                    intent=example.intent,
                ),
                partition,
                first + n,
            )
            for n, example in enumerate(part)
        ]
        write_flush(root, partition, first, first + len(part) - 1, consumed)
        offsets[partition] = first + len(part)
    return offsets


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A master dataset of CLINC150 rows of 25 intents over two partitions."""
    root = tmp_path_factory.mktemp("master")
    return root, archive(root, clinc_rows())


def settings_for(uri: str) -> MlflowSettings:
    name = f"test-{uuid.uuid4().hex[:8]}"
    return MlflowSettings(tracking_uri=uri, registered_model=name, experiment=name)


def test_a_retrain_registers_a_champion_with_its_lineage(mlflow_server, master):
    root, cutoff = master
    tracking = settings_for(mlflow_server)
    result = retrain(BatchSettings(master_dir=root), tracking, "queries")
    assert result.promoted and result.version == "1"
    assert result.scores.first_seen_accuracy > 0.85

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert int(tags["lineage.rows"]) == sum(cutoff.values())
    assert int(tags["lineage.train_rows"]) + int(tags["lineage.holdout_rows"]) == sum(
        cutoff.values()
    )
    assert decode_offsets(tags["lineage.cutoff_offsets"]) == cutoff
    assert (
        tags["lineage.ts_min"].startswith("2026-11-01") and len(tags["lineage.content_hash"]) == 64
    )
    assert {
        "holdout_first_seen_accuracy",
        "holdout_accuracy",
        "holdout_macro_f1",
        "holdout_log_loss",
        "holdout_first_seen_share",
    } <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert artifacts == {"report/per_intent_report.json", "report/confusion_matrix.png"}
    params = run.data.params
    assert params["model.factory"] == "models.batch.recipe:build_batch_model"
    assert params["model.params"] == "{}"
    assert params["estimator.features__words__ngram_range"] == "(1, 2)"
    assert params["estimator.classifier__svm__estimator__estimator__C"] == "1.0"
    assert "model.notes" not in tags  # the default model needs no wrapping

    # What the tracking UI shows: a model-training experiment, and what the run was trained and
    # judged on as datasets.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["history", "holdout"]
    contexts = {name: {t.key: t.value for t in i.tags} for name, i in inputs.items()}
    assert contexts["history"]["mlflow.data.context"] == "training"
    assert contexts["holdout"]["mlflow.data.context"] == "evaluation"
    history = inputs["history"].dataset
    assert json.loads(history.profile)["num_rows"] == int(tags["lineage.distinct_train_texts"])
    assert json.loads(history.source) == {"uri": str(root.resolve())}
    holdout = inputs["holdout"].dataset
    assert json.loads(holdout.profile)["num_rows"] == int(tags["lineage.distinct_holdout_texts"])
    assert history.digest != holdout.digest and len(history.digest) == 16

    version = client.get_model_version(tracking.registered_model, "1")
    assert decode_offsets(version.tags[CUTOFF_TAG]) == cutoff
    default = ModelSpec.parse(BatchSettings().model, BatchSettings().model_params)
    assert version.tags[MODEL_SPEC_TAG] == default.as_json()
    assert version.tags["content_hash"] == tags["lineage.content_hash"]
    champion = fetch_champion(client, tracking.registered_model)
    assert champion and champion.version == "1" and champion.cutoff_offsets == cutoff

    # The holdout shares no text with training, and the champion says which texts it learnt.
    loaded = load_champion(champion, with_training_texts=True)
    assert loaded.training_texts is not None
    assert len(loaded.training_texts) == int(tags["lineage.distinct_train_texts"])
    split = read_history_split(root, cutoff, BatchSettings().holdout_fraction)
    assert split.holdout_texts and not any(t in loaded.training_texts for t in split.holdout_texts)
    assert all(t in loaded.training_texts for t in split.texts)


def test_a_worse_model_is_not_promoted(mlflow_server, tmp_path):
    rows = clinc_rows()
    offsets = archive(tmp_path, rows)
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=tmp_path)
    assert retrain(batch, tracking, "queries").promoted
    archive(tmp_path, rows[:50], offsets)  # something new, so the next run is not skipped
    broken = retrain(batch, tracking, "queries", label_shuffle_seed=7)
    assert not broken.promoted
    assert broken.scores.first_seen_accuracy < broken.champion_scores.first_seen_accuracy
    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(tracking.registered_model, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(tracking.registered_model, CHALLENGER).version == "2"
    assert "not significantly better" in client.get_run(broken.run_id).data.tags["promotion"]


# A model that memorises: every word n-gram kept, no character n-grams, almost no regularisation.
MEMORISER = {
    "word_ngram_range": (1, 3),
    "char_ngram_range": None,
    "min_df": 1,
    "C": 1e4,
    "max_passes": 1000,  # liblinear to convergence: the default's 10 passes stop short at C=1e4
    "nb_weight": 0.0,
}


def test_a_memorising_challenger_on_a_repeat_heavy_history_is_refused(mlflow_server, tmp_path):
    """Popular texts repeat many times. A memoriser fits them perfectly, and on a holdout that
    shared texts with training it would look better; on first-seen texts it is not."""
    rows = clinc_rows()
    popular = rows[: len(rows) // 5]
    history = rows + popular * 10
    random.Random(2).shuffle(history)
    offsets = archive(tmp_path, history)
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=tmp_path)
    champion = retrain(batch, tracking, "queries")
    assert champion.promoted
    archive(tmp_path, popular * 2, offsets)  # more of the same repeats
    memorising = batch.model_copy(update={"model_params": MEMORISER})
    memoriser = retrain(memorising, tracking, "queries")
    assert not memoriser.promoted, memoriser.reason
    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(tracking.registered_model, CHAMPION).version == "1"
    # It does memorise: every training text right, on a history two thirds repeats.
    split = read_history_split(tmp_path, archived_positions(tmp_path), batch.holdout_fraction)
    model = load_champion(fetch_alias(client, tracking.registered_model, CHALLENGER)).estimator
    assert (model.predict(split.texts) == np.asarray(split.intents)).mean() == 1.0
    assert split.weights.sum() > 2 * len(split.texts)
    verdict = memoriser.verdict
    assert (
        verdict is not None
        and verdict.p_value >= batch.gate_alpha
        or verdict.losses >= verdict.wins
    )


def test_a_model_trained_on_more_data_is_promoted(mlflow_server, tmp_path):
    rows = clinc_rows()
    few = clinc_rows(per_intent=8)
    offsets = archive(tmp_path, few)
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=tmp_path, min_train_events=50)
    first = retrain(batch, tracking, "queries")
    assert first.promoted
    archive(tmp_path, rows, offsets)
    more = retrain(batch, tracking, "queries")
    assert more.promoted, more.reason
    assert more.verdict is not None and more.verdict.p_value < batch.gate_alpha
    assert more.scores.first_seen_accuracy > more.champion_scores.first_seen_accuracy
    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(tracking.registered_model, CHAMPION).version == "2"


@pytest.mark.parametrize(
    ("factory", "note"),
    [
        ("models.alternatives:tfidf_logistic", None),
        ("models.alternatives:linear_svc", "LinearSVC gives margins only"),
    ],
)
def test_a_configured_model_is_registered_gated_and_served_like_the_default(
    mlflow_server, tmp_path, factory, note
):
    """BATCH_MODEL chooses the model: it is gated against the champion like any other, and the
    speed layer's and serving's champion watch loads it and predicts with it."""
    rows = clinc_rows()
    offsets = archive(tmp_path, rows[: len(rows) // 2])
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=tmp_path)
    assert retrain(batch, tracking, "queries").promoted  # the default model, champion
    archive(tmp_path, rows[len(rows) // 2 :], offsets)
    configured = BatchSettings(master_dir=tmp_path, model=factory)
    result = retrain(configured, tracking, "queries")
    assert result.version == "2" and result.verdict is not None
    assert result.champion_scores is not None  # compared with the champion on one holdout
    assert result.scores.first_seen_accuracy > 0.85, result.reason

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.data.params["model.factory"] == factory
    notes = run.data.tags.get("model.notes", "")
    assert "wrapped in DistinctRowsClassifier" in notes
    assert note is None or note in notes
    alias = CHAMPION if result.promoted else CHALLENGER
    assert client.get_model_version_by_alias(tracking.registered_model, alias).version == "2"
    client.set_registered_model_alias(tracking.registered_model, CHAMPION, "2")

    watch = ChampionWatch(RegistryChampions(client, tracking.registered_model))
    assert watch.refresh()
    champion = watch.loaded()
    assert champion is not None and champion.info.version == "2"
    assert champion.training_texts is not None
    answers = champion.predict_proba_many(["set an alarm for 7 am", "what is my balance"])
    assert [sorted(a) for a in answers] == [sorted({e.intent for e in rows})] * 2
    assert all(abs(sum(a.values()) - 1) < 1e-6 for a in answers)


def test_a_retrain_registers_nothing_again_unless_its_history_or_its_model_is_new(
    mlflow_server, master
):
    """The same history and the same model: nothing registered (exit 99). Another model, or
    other parameters, on the same history: a new version, through the gate. `--force`: one
    more version whatever."""
    root, cutoff = master
    tracking = settings_for(mlflow_server)
    batch = BatchSettings(master_dir=root)
    assert retrain(batch, tracking, "queries").version == "1"
    with pytest.raises(NothingNew, match="champion version 1"):
        retrain(batch, tracking, "queries")
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT": tracking.experiment,
        "MLFLOW_REGISTERED_MODEL": tracking.registered_model,
        "BATCH_MASTER_DIR": str(root),
    }
    result = CliRunner().invoke(app, ["retrain"], env=env)
    assert result.exit_code == SKIPPED_EXIT_CODE, result.output
    assert "nothing registered" in " ".join(result.output.split())

    other = batch.model_copy(update={"model": "models.alternatives:tfidf_logistic"})
    tried = retrain(other, tracking, "queries")
    assert tried.version == "2" and tried.champion_scores is not None  # gated against v1
    alias = CHAMPION if tried.promoted else CHALLENGER
    with pytest.raises(NothingNew, match=f"{alias} version 2"):
        retrain(other, tracking, "queries")
    tuned = other.model_copy(update={"model_params": {"C": 1.0}})
    assert retrain(tuned, tracking, "queries").version == "3"

    forced = ["retrain", "--force", "--batch-model", "models.alternatives:tfidf_logistic"]
    result = CliRunner().invoke(app, [*forced, "--batch-model-params", '{"C": 1.0}'], env=env)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "version 4" in output and "workflowType=machine_learning" in output
    client = MlflowClient(mlflow_server)
    versions = client.search_model_versions(f"name = '{tracking.registered_model}'")
    assert sorted(v.version for v in versions) == ["1", "2", "3", "4"]
    assert {decode_offsets(v.tags[CUTOFF_TAG]) == cutoff for v in versions} == {True}


@pytest.mark.reliability
def test_mlflow_down_mid_run_fails_cleanly_and_the_next_run_succeeds(
    master, tmp_path, monkeypatch, reliability
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    rows = clinc_rows()
    root = tmp_path / "master"
    offsets = archive(root, rows)
    # Always a server of this test's own (it is stopped mid-run), whatever the environment says.
    server = throwaway_mlflow(tmp_path / "mlflow")
    tracking = settings_for(server.address)
    batch = BatchSettings(master_dir=root)
    assert server.up()
    try:
        first = retrain(batch, tracking, "queries")
        archive(root, rows[:50], offsets)  # new events, so the next runs have work to do

        def stop_server_after_fit(stage: str) -> None:
            if stage == "evaluate":
                server.down()

        with pytest.raises(Exception) as failure:
            retrain(batch, tracking, "queries", on_stage=stop_server_after_fit)
        assert "Connection" in repr(failure.value) or "connect" in str(failure.value).lower()

        server.up()
        client = MlflowClient(server.address)
        champion_after = fetch_champion(client, tracking.registered_model).version
        again = retrain(batch, tracking, "queries")
        scenario = "MLflow down during a retrain (between fit and evaluate)"
        reliability(scenario, "error raised by the failed run", type(failure.value).__name__)
        reliability(
            scenario, "champion kept through the failure", champion_after == first.version, "True"
        )
        reliability(scenario, "version registered by the next run", again.version, "2")
        assert champion_after == first.version
        assert again.version == "2"
        assert fetch_champion(client, tracking.registered_model).version in {"1", "2"}
    finally:
        server.down()


def test_two_schedulers_never_run_at_the_same_time(mlflow_server, master, tmp_path):
    """One scheduler holds the lock and registers a version; the other is refused the lock,
    retries after its backoff, and then skips: nothing is new since that version's cut-off."""
    root, _ = master
    tracking = settings_for(mlflow_server)
    env = cli_env(
        MLFLOW_TRACKING_URI=mlflow_server,
        MLFLOW_EXPERIMENT=tracking.experiment,
        MLFLOW_REGISTERED_MODEL=tracking.registered_model,
        BATCH_MASTER_DIR=root,
        BATCH_LOCK_PATH=tmp_path / "retrain.lock",
        SPEED_SIGNAL_DIR=tmp_path / "signals",
    )
    command = [*CLI, "schedule", "--interval", "3600", "--max-runs", "1"]
    schedulers = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [s.communicate(timeout=300)[0] for s in schedulers]
    assert [s.returncode for s in schedulers] == [0, 0], outputs
    flattened = [" ".join(out.split()) for out in outputs]  # the log wraps long lines
    assert any("another run holds the lock" in out for out in flattened), outputs
    assert any("skipped: nothing archived since the cut-off" in out for out in flattened), outputs

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'batch-retrain'")
    assert len(runs) == 1
