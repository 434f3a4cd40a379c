"""`lambda-ml evaluate` on a dataset of its own: the three views, the files, the two figures."""

import json
import random

from typer.testing import CliRunner

from pipelines.cli import app

WORDS = {
    "order_pizza": ["pizza", "pepperoni", "crust", "slice", "margherita"],
    "weather": ["rain", "sunny", "forecast", "umbrella", "temperature"],
    "alarm": ["alarm", "wake", "morning", "snooze", "clock"],
    "music": ["song", "playlist", "album", "guitar", "volume"],
    "taxi": ["taxi", "cab", "ride", "driver", "airport"],
    "recipe": ["recipe", "bake", "oven", "ingredients", "cook"],
}


def synthetic_dataset(path, per_intent=120, seed=3):
    rng = random.Random(seed)
    fillers = ["please", "can you", "i want", "now", "for me", "quickly", "tell me about"]
    with path.open("w") as out:
        for intent, words in WORDS.items():
            for _ in range(per_intent):
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
        "before drift",
        "after drift",
        "after retrain",
    }
    assert all(w["batch_accuracy"] is None for w in report["windows"] if w["end"] <= 240)
    # The batch model cannot know the late intents until it is retrained after the drift;
    # the blend can, through the speed model: it must gain there, and never trail much.
    assert report["post_drift_gain_vs_batch_points"] > 10
    assert report["worst_window_gap_vs_best_points"] < 2
    assert (output / "evaluation.png").stat().st_size > 10_000
    assert "| events | phase |" in (output / "evaluation.md").read_text()


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
