"""One prequential step, the same for the live speed layer and the offline evaluation.

Each labelled event is first predicted by both models and scored in the three views (batch only,
speed only, blend), and only then learnt by the blender and the speed model, so every score is
on an event no model has seen.
"""

from dataclasses import dataclass
from typing import Any

from models.blend import HedgeBlender, Probabilities
from models.metrics import WindowScore


@dataclass
class ViewScores:
    """Prequential scores of the three answers the system can serve."""

    speed: WindowScore
    batch: WindowScore
    blend: WindowScore

    @classmethod
    def with_window(cls, window: int) -> "ViewScores":
        return cls(WindowScore(window), WindowScore(window), WindowScore(window))


def prequential_step(
    speed_model: Any,
    blender: HedgeBlender,
    scores: ViewScores,
    text: str,
    intent: str,
    batch: Probabilities | None,
) -> bool | None:
    """Score then learn one labelled event; `batch` is the champion's probabilities for it
    (None before there is a champion). Returns whether the champion was right, or None."""
    x = {"text": text}
    speed = speed_model.predict_proba_one(x)
    scores.speed.update(speed, intent)
    scores.blend.update(blender.blend(batch, speed), intent)
    batch_right = None
    if batch is not None:
        batch_right = scores.batch.update(batch, intent)
        blender.learn(batch, speed, intent)
    speed_model.learn_one(x, intent)
    return batch_right
