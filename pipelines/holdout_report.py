"""Scoring a batch model on the holdout, and the report artifacts a person reads in MLflow."""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from models.blend import LOSS_CAP


@dataclass(frozen=True)
class HoldoutScores:
    accuracy: float
    macro_f1: float
    log_loss: float
    rows: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}

    def beats(self, other: "HoldoutScores") -> bool:
        """Higher accuracy wins; at equal accuracy, lower log loss does."""
        if not math.isclose(self.accuracy, other.accuracy, abs_tol=1e-12):
            return self.accuracy > other.accuracy
        return self.log_loss < other.log_loss


def score_holdout(
    estimator, texts: list[str], intents: list[str], weights: np.ndarray
) -> tuple[HoldoutScores, list[str]]:
    """Accuracy, macro-F1 and log loss of `estimator` on the holdout, and its predictions.

    The holdout comes as distinct (text, intent) pairs with how often each occurred, so each
    text is predicted once and scored as many times as it was asked. Intents the model never
    saw count as wrong with the capped loss, like anywhere else in the pipeline, so models
    trained on different label sets are compared on equal terms.
    """
    proba = estimator.predict_proba(texts)
    classes = [str(c) for c in estimator.classes_]
    index = {c: i for i, c in enumerate(classes)}
    predicted = [classes[i] for i in np.argmax(proba, axis=1)]
    p_true = np.array(
        [proba[row, index[y]] if y in index else 0.0 for row, y in enumerate(intents)]
    )
    losses = np.minimum(LOSS_CAP, -np.log(np.maximum(p_true, 1e-300)))
    truth = np.asarray(intents)
    scores = HoldoutScores(
        accuracy=float(np.average(np.asarray(predicted) == truth, weights=weights)),
        macro_f1=float(
            f1_score(truth, predicted, average="macro", zero_division=0, sample_weight=weights)
        ),
        log_loss=float(np.average(losses, weights=weights)),
        rows=int(weights.sum()),
    )
    return scores, predicted


def write_report_artifacts(
    folder: Path, intents: list[str], weights: np.ndarray, predicted: list[str]
) -> list[Path]:
    """A per-intent report (JSON) and a confusion-matrix plot (PNG) of the weighted holdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    report = classification_report(
        intents, predicted, output_dict=True, zero_division=0, sample_weight=weights
    )
    report_path = folder / "per_intent_report.json"
    report_path.write_text(json.dumps(report, indent=1, sort_keys=True))

    labels = sorted(set(intents) | set(predicted))
    matrix = confusion_matrix(intents, predicted, labels=labels, sample_weight=weights)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
    size = max(6.0, len(labels) * 0.09)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    axes.set_title(f"Holdout confusion matrix (row-normalised, {int(weights.sum())} events)")
    axes.set_xlabel("predicted intent")
    axes.set_ylabel("true intent")
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=4)
    axes.set_yticks(range(len(labels)), labels, fontsize=4)
    figure.tight_layout()
    plot_path = folder / "confusion_matrix.png"
    figure.savefig(plot_path, dpi=110)
    plt.close(figure)
    return [report_path, plot_path]
