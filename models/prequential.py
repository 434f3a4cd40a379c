"""One prequential step, the same for the live speed layer and the offline evaluation.

Each labelled event is first predicted by both models and scored in the three views (batch only,
speed only, blend), and only then learnt by the blender and the speed model, so every score is
on an event no model has learnt yet. Scores are split by whether each model had trained on the
event's text before (`models.texts`): a repeat measures memory, a first-seen text understanding.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.blend import HedgeBlender
from models.metrics import SplitScore, row_outcome
from models.texts import TextMemory, text_key


@dataclass
class ViewScores:
    """Prequential scores of the three answers the system can serve.

    Attributes
    ----------
    speed, batch, blend
        The speed model's, the batch champion's and the blend's scores.
    """

    speed: SplitScore
    batch: SplitScore
    blend: SplitScore

    @classmethod
    def with_window(cls, window: int) -> "ViewScores":
        """Empty scores, each with windows of `window` events."""
        return cls(SplitScore(window), SplitScore(window), SplitScore(window))

    def figures(self) -> dict[str, float]:
        """Each view's figures once it has scored an event (no batch figures before the first
        champion; until then the blend is the speed model's answer)."""
        figures: dict[str, float] = {}
        for name in ("speed", "batch", "blend"):
            score: SplitScore = getattr(self, name)
            if score.seen:
                figures |= score.figures(f"{name}_")
        return figures


BatchAnswer = tuple[Sequence[Any], np.ndarray]
"""The champion's classes, and its probabilities for one event in that order."""


def speed_probabilities(model: Any, x: dict) -> tuple[Sequence[Any], np.ndarray]:
    """The speed model's classes and probabilities for `x` as an array: through its
    `predict_proba_array` when it has one, else through River's `predict_proba_one`."""
    fast = getattr(model, "predict_proba_array", None)
    if fast is not None:
        return fast(x)
    probabilities = model.predict_proba_one(x)
    return list(probabilities), np.fromiter(probabilities.values(), float, len(probabilities))


def prequential_step(
    speed_model: Any,
    blender: HedgeBlender,
    scores: ViewScores,
    text: str,
    intent: str,
    batch: BatchAnswer | None,
    speed_texts: TextMemory,
    batch_texts: TextMemory | None,
    learn: bool = True,
) -> bool | None:
    """Score then learn one labelled event.

    Parameters
    ----------
    speed_model
        The speed model (River's API); it learns the event.
    blender
        It blends the two answers and learns from them.
    scores
        Where the three views' scores go.
    text, intent
        The event.
    batch
        The champion's answer for it; None before there is a champion.
    speed_texts
        The texts the speed model learnt; the text is added to it here.
    batch_texts
        The texts the champion trained on.
    learn
        False only scores: a probe event, which no model may train on.

    Returns
    -------
    bool or None
        Whether the champion's top intent was right; None without a champion.
    """
    x = {"text": text}
    key = text_key(text)
    speed_seen = speed_texts.contains_key(key)
    batch_seen = batch is not None and batch_texts is not None and batch_texts.contains_key(key)
    seen_by_any = speed_seen or batch_seen
    speed_classes, speed_row = speed_probabilities(speed_model, x)
    batch_classes, batch_row = batch if batch is not None else ((), None)
    alignment, blended = blender.step(
        batch_classes,
        batch_row,
        speed_classes,
        speed_row,
        intent,
        batch_seen,
        learn=learn and batch is not None,
    )
    speed_right, speed_p = row_outcome(speed_row, alignment.speed_index.get(intent))
    scores.speed.record(speed_right, speed_p, seen=speed_seen, seen_by_any=seen_by_any)
    blend_right, blend_p = row_outcome(blended, alignment.index.get(intent))
    scores.blend.record(blend_right, blend_p, seen=seen_by_any, seen_by_any=seen_by_any)
    batch_right = None
    if batch_row is not None:
        column = alignment.index.get(intent)
        known = column if column is not None and column < alignment.n_batch else None
        batch_right, batch_p = row_outcome(batch_row, known)
        scores.batch.record(batch_right, batch_p, seen=batch_seen, seen_by_any=seen_by_any)
    if learn:
        speed_model.learn_one(x, intent)
        speed_texts.add_key(key)
    return batch_right
