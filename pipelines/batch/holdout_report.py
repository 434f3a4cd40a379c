"""Scoring a batch model on the holdout, and the report artifacts a person reads in MLflow."""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from models.losses import capped_log_losses
from models.scope import find_scope, scope_figures


@dataclass(frozen=True)
class HoldoutScores:
    """A model's scores on the text-disjoint holdout.

    The holdout shares no text with training, so each distinct text's first occurrence is a
    first-seen text; its later occurrences are repeats within the holdout. The headline
    (`first_seen_accuracy`, `macro_f1`, `log_loss`) counts each distinct text once; `accuracy`
    counts every event, repeats included. `first_seen_in_scope_accuracy` and
    `first_seen_oos_recall` judge each distinct text's scope as serving would (the model's
    `models.scope.ScopeDecision`, else its top intent): NaN, and left out of the metrics, when
    the holdout has no query of that kind.
    """

    first_seen_accuracy: float
    macro_f1: float
    log_loss: float
    accuracy: float
    repeated_accuracy: float
    first_seen_share: float
    rows: int
    distinct_texts: int
    first_seen_in_scope_accuracy: float = math.nan
    first_seen_oos_recall: float = math.nan

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}{k}": float(v) for k, v in asdict(self).items() if not math.isnan(float(v))
        }


def score_holdout(
    estimator, texts: list[str], intents: list[str], weights: np.ndarray
) -> tuple[HoldoutScores, list[str], np.ndarray]:
    """`estimator`'s scores on the holdout, its predictions, and whether each was right.

    The holdout comes as distinct (text, intent) pairs with how often each occurred, so each
    text is predicted once. Intents the model never saw count as wrong with the capped loss,
    like anywhere else in the pipeline, so models trained on different label sets are compared
    on equal terms.
    """
    proba = estimator.predict_proba(texts)
    classes = [str(c) for c in estimator.classes_]
    index = {c: i for i, c in enumerate(classes)}
    predicted = [classes[i] for i in np.argmax(proba, axis=1)]
    p_true = np.array(
        [proba[row, index[y]] if y in index else 0.0 for row, y in enumerate(intents)]
    )
    losses = capped_log_losses(p_true)
    truth = np.asarray(intents)
    right = np.asarray(predicted) == truth
    repeats = weights - 1.0
    scope = scope_figures(classes, proba, intents, find_scope(estimator))
    scores = HoldoutScores(
        first_seen_accuracy=float(right.mean()),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        log_loss=float(losses.mean()),
        accuracy=float(np.average(right, weights=weights)),
        repeated_accuracy=float(np.average(right, weights=repeats)) if repeats.sum() else math.nan,
        first_seen_share=float(len(texts) / weights.sum()),
        rows=int(weights.sum()),
        distinct_texts=len(texts),
        first_seen_in_scope_accuracy=float(scope["in_scope_accuracy"]),
        first_seen_oos_recall=float(scope["oos_recall"]),
    )
    return scores, predicted, right


def write_report_artifacts(folder: Path, intents: list[str], predicted: list[str]) -> list[Path]:
    """A per-intent report (JSON) and a confusion-matrix plot (PNG) on the holdout's distinct
    texts, each counted once: first-seen texts, as the gate sees them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    report = classification_report(intents, predicted, output_dict=True, zero_division=0)
    report_path = folder / "per_intent_report.json"
    report_path.write_text(json.dumps(report, indent=1, sort_keys=True))

    labels = sorted(set(intents) | set(predicted))
    matrix = confusion_matrix(intents, predicted, labels=labels).astype(np.float64)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
    size = max(6.0, len(labels) * 0.09)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    axes.set_title(f"Holdout confusion matrix (row-normalised, {len(intents)} first-seen texts)")
    axes.set_xlabel("predicted intent")
    axes.set_ylabel("true intent")
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=4)
    axes.set_yticks(range(len(labels)), labels, fontsize=4)
    figure.tight_layout()
    plot_path = folder / "confusion_matrix.png"
    figure.savefig(plot_path, dpi=110)
    plt.close(figure)
    return [report_path, plot_path]
