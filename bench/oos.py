"""Out of scope on CLINC150: in-scope accuracy and out-of-scope recall of the batch model with
its scope decision (`models.scope.ScopeClassifier`), on the test split (4,500 in-scope queries,
1,000 out of scope), never used for fitting or tuning.

Two fits of the default batch model wrapped in `ScopeClassifier`, the decision tuned on the
out-of-fold answers of its own training rows:

- `train`: the train split with oos_train (the rows the published figures train on); the val
  split with oos_val is then untouched and scored as validation;
- `train_and_val`: every split but test.

For each, the figures at the operating point `fit` chose, the same model judging by its top
intent alone (`oos` learnt as one more intent), and the curve between in-scope accuracy and
out-of-scope recall as the threshold moves. Writes `bench/results/oos.json` and `docs/oos.png`.

    lambda-ml bench oos
"""

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import save_figures
from models.scope import (
    ANSWER_FEATURES,
    OOS_LABEL,
    ScopeClassifier,
    best_in_scope,
    scope_figures,
    scoped_model,
)
from pipelines.provenance import PROJECT_ROOT
from streams.dataset import CLINC150_DATA, load_dataset

FITS = {
    "train": ("train", "oos_train"),
    "train_and_val": ("train", "val", "oos_train", "oos_val"),
}
SCORED = {"val": ("val", "oos_val"), "test": ("test", "oos_test")}
PLOT = PROJECT_ROOT / "docs" / "oos.png"
CURVE_POINTS = 200
NAMES = {"train": "train", "train_and_val": "train + val"}


def _rows(examples: list, splits: tuple[str, ...]) -> tuple[list[str], list[str]]:
    chosen = [e for e in examples if e.split in splits]
    return [e.text for e in chosen], [e.intent for e in chosen]


def curve(model: ScopeClassifier, matrix: np.ndarray, y: list[str]) -> list[dict[str, float]]:
    """In-scope accuracy and out-of-scope recall for thresholds spread over the scores."""
    decision = model.scope_
    scores = decision.scores(model.classes_, matrix)
    labels = np.asarray([*model.classes_, OOS_LABEL], dtype=object)
    right = labels[best_in_scope(model.classes_, matrix, OOS_LABEL)] == np.asarray(y)
    out = np.asarray(y) == OOS_LABEL
    points = []
    for threshold in np.unique(np.quantile(scores, np.linspace(0, 1, CURVE_POINTS))):
        kept = scores >= threshold
        points.append(
            {
                "threshold": round(float(threshold), 4),
                "in_scope_accuracy": round(float((kept & right & ~out).sum() / (~out).sum()), 4),
                "oos_recall": round(float((~kept & out).sum() / out.sum()), 4),
            }
        )
    return points


def measure(examples: list, fit_splits: tuple[str, ...], scored: dict) -> dict[str, Any]:
    """Fit on `fit_splits`, then score each of `scored` (name -> splits)."""
    texts, intents = _rows(examples, fit_splits)
    started = time.perf_counter()
    model = scoped_model().fit(texts, intents)
    result: dict[str, Any] = {
        "fit_splits": list(fit_splits),
        "fit_s": round(time.perf_counter() - started, 1),
        "decision": {
            "weights": dict(
                zip(
                    ANSWER_FEATURES,
                    model.scope_.weights,
                    strict=True,
                )
            ),
            "intercept": model.scope_.intercept,
            "threshold": model.scope_.threshold,
            "accuracy_cost": model.scope_.accuracy_cost,
        },
    }
    for name, splits in scored.items():
        texts, intents = _rows(examples, splits)
        matrix = model.predict_proba(texts)
        chosen = scope_figures(model.classes_, matrix, intents, model.scope_)
        top_intent = scope_figures(model.classes_, matrix, intents, None)
        result[name] = {
            "in_scope_accuracy": round(chosen["in_scope_accuracy"], 4),
            "oos_recall": round(chosen["oos_recall"], 4),
            "in_scope_queries": chosen["in_scope_queries"],
            "oos_queries": chosen["oos_queries"],
            "oos_as_class": {
                "in_scope_accuracy": round(top_intent["in_scope_accuracy"], 4),
                "oos_recall": round(top_intent["oos_recall"], 4),
            },
            "curve": curve(model, matrix, intents),
        }
        started = time.perf_counter()
        for _ in range(3):
            model.scope_.in_scope(model.classes_, matrix)
        result[name]["decision_us_per_query"] = round(
            1e6 * (time.perf_counter() - started) / (3 * len(texts)), 3
        )
    return result


def plot(runs: dict[str, dict], path: Path) -> None:
    """In-scope accuracy against out-of-scope recall on the test split, per fit, with the
    chosen operating points and the goal's corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for (name, run), colour in zip(runs.items(), ("tab:blue", "tab:green"), strict=False):
        test = run["test"]
        points = sorted(test["curve"], key=lambda p: p["oos_recall"])
        axes.plot(
            [p["oos_recall"] for p in points],
            [p["in_scope_accuracy"] for p in points],
            color=colour,
            label=f"fitted on {NAMES[name]}: threshold moving",
        )
        axes.scatter([test["oos_recall"]], [test["in_scope_accuracy"]], color=colour, zorder=3)
        axes.annotate(
            f"chosen: {100 * test['in_scope_accuracy']:.1f}% / {100 * test['oos_recall']:.1f}%",
            (test["oos_recall"], test["in_scope_accuracy"]),
            textcoords="offset points",
            xytext=(-170, -22 if colour == "tab:blue" else 12),
            color=colour,
        )
        baseline = test["oos_as_class"]
        axes.scatter(
            [baseline["oos_recall"]],
            [baseline["in_scope_accuracy"]],
            color=colour,
            marker="x",
            label=f"fitted on {NAMES[name]}: oos as an intent only",
        )
    axes.axhline(0.92, color="grey", linestyle=":", linewidth=1)
    axes.axvline(0.75, color="grey", linestyle=":", linewidth=1, label="goal: 92% and 75%")
    axes.set_xlabel("out-of-scope recall (CLINC150 test, 1,000 queries)")
    axes.set_ylabel("in-scope accuracy (4,500 queries)")
    axes.set_ylim(0.80, 0.96)
    axes.set_xlim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(data: Path = CLINC150_DATA) -> dict:
    examples = load_dataset(data).examples
    runs = {
        "train": measure(examples, FITS["train"], SCORED),
        "train_and_val": measure(examples, FITS["train_and_val"], {"test": SCORED["test"]}),
    }
    plot(runs, PLOT)
    headline = runs["train"]
    figures = {
        "in_scope_accuracy": headline["test"]["in_scope_accuracy"],
        "oos_recall": headline["test"]["oos_recall"],
        "val_in_scope_accuracy": headline["val"]["in_scope_accuracy"],
        "val_oos_recall": headline["val"]["oos_recall"],
        "train_and_val_in_scope_accuracy": runs["train_and_val"]["test"]["in_scope_accuracy"],
        "train_and_val_oos_recall": runs["train_and_val"]["test"]["oos_recall"],
        "runs": runs,
        "plot": str(PLOT.relative_to(PROJECT_ROOT)),
    }
    return save_figures("oos", figures, {"data": str(data), "fits": FITS})
