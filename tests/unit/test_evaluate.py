"""`lambda-ml evaluate` on a dataset of its own: the three views, the files, the two figures."""

import json
import random

import pytest
from typer.testing import CliRunner

from models.texts import normalise
from pipelines.cli.main import app
from pipelines.evaluation.evaluate import EvaluationPlan, _split_probes, _stream, run_evaluation
from pipelines.produce import ReplayOptions
from streams.dataset import Example
from streams.labels import Label, delayed_labels

WORDS = {
    "order_pizza": ["pizza", "pepperoni", "crust", "slice", "margherita"],
    "weather": ["rain", "sunny", "forecast", "umbrella", "temperature"],
    "alarm": ["alarm", "wake", "morning", "snooze", "clock"],
    "music": ["song", "playlist", "album", "guitar", "volume"],
    "taxi": ["taxi", "cab", "ride", "driver", "airport"],
    "recipe": ["recipe", "bake", "oven", "ingredients", "cook"],
}


OUT_OF_SCOPE = ["stock", "poem", "joke", "tax", "garden", "lottery", "chess", "visa", "yoga"]


def synthetic_dataset(path, per_intent=120, seed=3, out_of_scope=0):
    """Queries of `WORDS`'s intents, and `out_of_scope` queries labelled `oos` whose words no
    intent uses."""
    rng = random.Random(seed)
    fillers = ["please", "can you", "i want", "now", "for me", "quickly", "tell me about"]
    topics = [*WORDS.items()] + [("oos", OUT_OF_SCOPE)] * bool(out_of_scope)
    with path.open("w") as out:
        for intent, words in topics:
            for _ in range(out_of_scope if intent == "oos" else per_intent):
                text = " ".join(rng.sample(fillers, 2) + rng.sample(words, 2))
                out.write(json.dumps({"text": text, "intent": intent}) + "\n")


def test_evaluate_on_a_users_dataset_with_late_intents(tmp_path):
    data = tmp_path / "mine.jsonl"
    synthetic_dataset(data)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--late-intents",
            "taxi,recipe",
            "--limit",
            "2400",
            "--retrain-at",
            "0.1,0.75",
            "--output",
            str(output),
            "--no-mlflow-log",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((output / "evaluation.json").read_text())
    assert report["scenario"]["late_intents"] == ["recipe", "taxi"]
    assert report["drift_at"] == 1200 and report["retrain_at"] == [240, 1800]
    assert {w["phase"] for w in report["windows"]} == {
        "no batch model yet",
        "before drift",
        "after drift",
        "after retrain",
    }
    windows = report["windows"]
    for w in windows:  # the first phase is exactly the windows without a batch answer
        assert (w["phase"] == "no batch model yet") == (w["counts"]["batch"]["all"][0] == 0)
    # The batch model cannot know the late intents until it is retrained after the drift;
    # the blend can, through the speed model: it must gain there, and never trail much, on
    # all texts and on the texts neither model has trained on.
    assert report["post_drift_gain_vs_batch_points"] > 10
    assert report["worst_window_gap_vs_best_points"] < 2
    assert report["first_seen_post_drift_gain_vs_batch_points"] > 10
    # Every event is first-seen or repeated for each view, and novel ones are first-seen to all.
    for w in windows:
        for view, groups in w["counts"].items():
            assert groups["first_seen"][0] + groups["repeated"][0] == groups["all"][0], view
            assert groups["novel"][0] <= groups["first_seen"][0], view
    # This dataset's texts repeat (two fillers and two words of five), so repeats dominate.
    assert 0 < report["first_seen_share"] < 0.5
    # Probes: each entered once, scored by every view once a model exists, learnt by none.
    probes = report["scenario"]["probes"]
    assert probes > 0
    assert sum(w["probes"]["speed"][0] for w in windows) == probes
    assert (output / "evaluation.png").stat().st_size > 10_000
    assert "| events | phase |" in (output / "evaluation.md").read_text()


@pytest.mark.parametrize(
    ("labels", "min_oos_recall"),
    [([], 0.5), (["--label-delay", "100", "--label-share", "0.6"], 0.0)],
    ids=["labels with their queries", "late labels"],
)
def test_evaluate_scores_out_of_scope_judgements_on_novel_texts(tmp_path, labels, min_oos_recall):
    """With a batch model that has a scope decision, each view's in-scope accuracy and
    out-of-scope recall on novel texts are in the report; with late labels, of the judgements
    made when each query arrived (a champion fitted on fewer labels, with few out-of-scope
    examples among them, turns fewer away), and the blend keeps the champion's abstentions."""
    data = tmp_path / "mine.jsonl"
    synthetic_dataset(data, per_intent=60, out_of_scope=120)
    output = tmp_path / "out"
    arguments = ["evaluate", "--data", str(data), "--late-intents", "taxi", "--limit", "1500"]
    arguments += labels
    arguments += ["--retrain-at", "0.2,0.7", "--output", str(output), "--no-mlflow-log"]
    arguments += ["--batch-model", "models.scope:scoped_model"]
    arguments += ["--batch-model-params", '{"model_params": {"char_ngram_range": null}}']
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    report = json.loads((output / "evaluation.json").read_text())
    assert report["first_seen_oos_events"] > 20 and report["first_seen_in_scope_events"] > 100
    for view in ("batch", "speed", "blend"):
        assert 0.5 < report[f"first_seen_{view}_in_scope_accuracy"] <= 1.0, view
    assert report["first_seen_blend_oos_recall"] > min_oos_recall
    assert report["first_seen_blend_oos_recall"] >= report["first_seen_batch_oos_recall"]
    for w in report["windows"]:
        in_scope, answered, out, turned_away = w["scope"]["blend"]
        assert answered <= in_scope and turned_away <= out
    assert "Out of scope, on novel texts" in (output / "evaluation.md").read_text()


def test_probe_texts_are_held_out_whole_and_enter_once():
    rows = [Example(f"text {i % 40}", f"intent{i % 4}") for i in range(400)]
    kept, probes = _split_probes(rows, 0.25, seed=1)
    probe_texts = [normalise(e.text) for e in probes]
    assert len(probe_texts) == len(set(probe_texts)) == 10
    assert not set(probe_texts) & {normalise(e.text) for e in kept}
    assert len(kept) == 300


def test_evaluate_names_what_is_wrong(tmp_path):
    data = tmp_path / "mine.jsonl"
    synthetic_dataset(data, per_intent=10)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--late-intents",
            "nope",
            "--output",
            str(tmp_path),
            "--no-mlflow-log",
        ],
    )
    assert result.exit_code == 1
    assert "nope" in result.output


def test_late_labels_are_scored_when_they_arrive_on_the_answers_given_at_the_query(tmp_path):
    """With a label delay and share, only the labels that come are scored, each in the window
    where it arrives, on the answers kept from when its query came; probes stay inline."""
    data = tmp_path / "mine.jsonl"
    synthetic_dataset(data, per_intent=60)
    replay_options = ReplayOptions(data=data, limit=1200, label_delay=150, label_share=0.4)
    plan = EvaluationPlan(replay=replay_options, retrain_at=(300, 900), window=200)
    result = run_evaluation(plan)
    events, _, _ = _stream(plan)
    labels = [
        label
        for label in delayed_labels((e.item for e in events), replay_options.labelling)
        if isinstance(label, Label) and not events[label.index].probe
    ]
    assert 0.3 * len(events) < len(labels) < 0.5 * len(events)
    assert all(label.after >= label.index + 150 for label in labels[:-150])
    for window in result.windows:
        arrived = [label for label in labels if window.start <= label.after < window.end]
        assert window.labelled == len(arrived), window.start
    # The first window's queries are answered by a speed model that has learnt nothing yet,
    # since no label arrives before event 150: it cannot be right on any of them.
    first = result.windows[0]
    assert first.counts["speed"]["all"][0] > 0
    assert first.counts["speed"]["all"][1] == 0
    assert result.scenario["label_delay"] == 150 and result.scenario["label_share"] == 0.4
