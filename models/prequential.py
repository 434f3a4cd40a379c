"""One prequential step, the same for the live speed layer and the offline evaluation.

Each labelled event is first predicted by both models and scored in the three views (batch only,
speed only, blend), and only then learnt by the blender and the speed model, so every score is
on an event no model has learnt yet. Scores are split by whether each model had trained on the
event's text before (`models.texts`): a repeat measures memory, a first-seen text understanding.
"""

from dataclasses import dataclass
from typing import Any

from models.blend import HedgeBlender, Probabilities
from models.metrics import SplitScore
from models.texts import TextMemory, text_key


@dataclass
class ViewScores:
    """Prequential scores of the three answers the system can serve."""

    speed: SplitScore
    batch: SplitScore
    blend: SplitScore

    @classmethod
    def with_window(cls, window: int) -> "ViewScores":
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


def prequential_step(
    speed_model: Any,
    blender: HedgeBlender,
    scores: ViewScores,
    text: str,
    intent: str,
    batch: Probabilities | None,
    speed_texts: TextMemory,
    batch_texts: TextMemory | None,
    learn: bool = True,
) -> bool | None:
    """Score then learn one labelled event; returns whether the champion was right, or None.

    `batch` is the champion's probabilities for it (None before there is a champion);
    `batch_texts` the texts the champion trained on, `speed_texts` those the speed model
    learnt (the text is added to it here). `learn=False` only scores: a probe event, which
    no model may train on.
    """
    x = {"text": text}
    key = text_key(text)
    speed_seen = speed_texts.contains_key(key)
    batch_seen = batch is not None and batch_texts is not None and batch_texts.contains_key(key)
    seen_by_any = speed_seen or batch_seen
    speed = speed_model.predict_proba_one(x)
    scores.speed.update(speed, intent, seen=speed_seen, seen_by_any=seen_by_any)
    blended = blender.blend(batch, speed, batch_seen)
    scores.blend.update(blended, intent, seen=seen_by_any, seen_by_any=seen_by_any)
    batch_right = None
    if batch is not None:
        batch_right = scores.batch.update(batch, intent, seen=batch_seen, seen_by_any=seen_by_any)
        if learn:
            blender.learn(batch, speed, intent, batch_seen)
    if learn:
        speed_model.learn_one(x, intent)
        speed_texts.add_key(key)
    return batch_right
