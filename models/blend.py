"""Blending the batch champion with the speed model, with weights learnt online.

The batch model only knows the intents it was trained on; the speed model learns new ones as
they arrive. So the blend lets the speed model say how likely the query is to be an intent the
batch model has never seen (`novel_mass`), and mixes the two models over the intents both can
answer with Hedge weights: each model's weight decays with its recent, exponentially-weighted
log loss, so the blend follows whichever is doing better now (prequential: predict, then learn).
"""

import math
from collections.abc import Mapping, Set

Probabilities = Mapping[str, float]

LOSS_CAP = -math.log(1e-4)


def _log_loss(p: float) -> float:
    return min(LOSS_CAP, -math.log(max(p, 1e-300)))


class HedgeBlender:
    """Mixture weights for (batch, speed) from discounted cumulative log loss.

    >>> blender = HedgeBlender()
    >>> batch, speed = {"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.7, "c": 0.1}
    >>> for _ in range(50):
    ...     blender.learn(batch, speed, "a")
    >>> round(blender.weights[0], 3)
    1.0
    >>> p = blender.blend(batch, speed)
    >>> max(p, key=p.get), round(sum(p.values()), 6)
    ('a', 1.0)
    """

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.995) -> None:
        if learning_rate <= 0 or not 0 < decay <= 1:
            raise ValueError("learning_rate must be > 0 and decay in (0, 1]")
        self.learning_rate = learning_rate
        self.decay = decay
        self.batch_loss = 0.0
        self.speed_loss = 0.0
        self.learnt = 0

    @property
    def weights(self) -> tuple[float, float]:
        """(batch_weight, speed_weight), summing to 1."""
        gap = self.learning_rate * (self.speed_loss - self.batch_loss)
        batch_weight = 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, gap))))
        return batch_weight, 1.0 - batch_weight

    def blend(self, batch: Probabilities | None, speed: Probabilities | None) -> dict[str, float]:
        """The blended distribution over the union of both models' intents."""
        if not batch:
            return dict(speed or {})
        if not speed:
            return dict(batch)
        novel = novel_mass(batch.keys(), speed)
        known_speed = _renormalised_known(batch.keys(), speed, novel)
        batch_weight, speed_weight = self.weights
        blended = {
            intent: (1.0 - novel) * (batch_weight * p + speed_weight * known_speed.get(intent, 0.0))
            for intent, p in batch.items()
        }
        for intent, p in speed.items():
            if intent not in batch:
                blended[intent] = p
        return blended

    def learn(self, batch: Probabilities | None, speed: Probabilities | None, intent: str) -> None:
        """Update the weights with the models' log loss on a labelled event both can answer."""
        if not batch or not speed or intent not in batch:
            return
        known_speed = _renormalised_known(batch.keys(), speed, novel_mass(batch.keys(), speed))
        self.batch_loss = self.decay * self.batch_loss + _log_loss(batch[intent])
        self.speed_loss = self.decay * self.speed_loss + _log_loss(known_speed.get(intent, 0.0))
        self.learnt += 1


def novel_mass(known: Set[str], speed: Probabilities) -> float:
    """The speed model's probability that the intent is one the batch model does not know."""
    return min(1.0, sum(p for intent, p in speed.items() if intent not in known))


def _renormalised_known(known: Set[str], speed: Probabilities, novel: float) -> dict[str, float]:
    rest = 1.0 - novel
    if rest <= 1e-12:
        return {}
    return {intent: p / rest for intent, p in speed.items() if intent in known}
