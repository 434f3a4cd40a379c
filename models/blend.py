"""Blending the batch champion with the speed model, with weights learnt online.

The batch model only knows the intents it was trained on; the speed model learns new ones as
they arrive. Three experts answer each query:

- `batch`: the champion alone (an intent it never saw gets probability 0),
- `speed`: the speed model alone,
- `novelty`: the speed model says how likely the query is to be an intent the batch model has
  never seen (`novel_mass`); the rest of the mass is shared over the intents both know by an
  inner mixture of the two.

The blend is the Hedge mixture of the three: each expert's weight decays with its recent,
exponentially-weighted log loss (learnt apart for texts the batch model trained on and texts
it has not), so the blend follows whichever view is doing best now (batch
before a drift, the speed side after it, the new batch model after a retrain). The memory is
short on purpose (decay 0.9, about ten events) and the learning rate low (0.3), so the weights
move fast but stay mixed: a long memory keeps trusting the old champion for hundreds of events
after a drift, while the speed model already knows the new intents (`lambda-ml evaluate`
measures how far the blend trails the better model in any window). Everything is prequential:
predict, then learn.
"""

import copy
import math
from collections.abc import Mapping, Sequence, Set
from typing import Any

import numpy as np

# Intent -> probability; keys are any hashable label, as in River.
Probabilities = Mapping[Any, float]

LOSS_CAP = -math.log(1e-4)
EXPERTS = ("batch", "speed", "novelty")


def _log_loss(p: float) -> float:
    return min(LOSS_CAP, -math.log(max(p, 1e-300)))


def _softmin(losses: list[float], learning_rate: float) -> list[float]:
    best = min(losses)
    scores = [math.exp(-learning_rate * (loss - best)) for loss in losses]
    total = sum(scores)
    return [s / total for s in scores]


class _Hedge:
    """One set of Hedge weights: discounted log losses of the three experts, and of the inner
    mixture's two sides."""

    def __init__(self) -> None:
        self.expert_loss = [0.0, 0.0, 0.0]
        self.inner_loss = [0.0, 0.0]
        self.learnt = 0

    def experts(self, learning_rate: float) -> list[float]:
        return _softmin(self.expert_loss, learning_rate)

    def inner(self, learning_rate: float) -> list[float]:
        return _softmin(self.inner_loss, learning_rate)


class HedgeBlender:
    """Hedge weights over the batch, speed and novelty experts, from discounted log loss.

    Two sets of weights are learnt: one for texts the batch model trained on, one for texts it
    has not (`batch_seen`). A champion all but never errs on a text it has trained on, and most
    events are such repeats; weights learnt over all events together would trust it on new
    texts as much as on its repeats. Properties without `batch_seen` describe the weights for
    new texts.

    >>> blender = HedgeBlender()
    >>> batch, speed = {"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.7, "c": 0.1}
    >>> for _ in range(50):
    ...     blender.learn(batch, speed, "a")
    >>> round(blender.weights[0], 2), blender.weights_for(batch_seen=True)
    (0.99, (0.5, 0.5))
    >>> p = blender.blend(batch, speed)
    >>> max(p, key=p.get), round(sum(p.values()), 6)
    ('a', 1.0)
    """

    def __init__(self, learning_rate: float = 0.3, decay: float = 0.9) -> None:
        if learning_rate <= 0 or not 0 < decay <= 1:
            raise ValueError("learning_rate must be > 0 and decay in (0, 1]")
        self.learning_rate = learning_rate
        self.decay = decay
        self.new_texts = _Hedge()
        self.seen_texts = _Hedge()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A blender pickled before the two sets: its one set serves both."""
        if "new_texts" not in state:
            hedge = _Hedge()
            hedge.expert_loss, hedge.inner_loss = state.pop("expert_loss"), state.pop("inner_loss")
            hedge.learnt = state.pop("learnt")
            state["new_texts"] = hedge
            state["seen_texts"] = copy.deepcopy(hedge)
            state["seen_texts"].learnt = 0  # the events were learnt once
        self.__dict__.update(state)

    def _hedge(self, batch_seen: bool) -> _Hedge:
        return self.seen_texts if batch_seen else self.new_texts

    @property
    def learnt(self) -> int:
        return self.new_texts.learnt + self.seen_texts.learnt

    @property
    def expert_weights(self) -> dict[str, float]:
        """The three experts' weights for texts the batch model has not trained on."""
        weights = self.new_texts.experts(self.learning_rate)
        return dict(zip(EXPERTS, weights, strict=True))

    @property
    def weights(self) -> tuple[float, float]:
        """`weights_for` texts the batch model has not trained on."""
        return self.weights_for(batch_seen=False)

    def weights_for(self, batch_seen: bool) -> tuple[float, float]:
        """(batch_weight, speed_weight): how much of the blend each model carries, summing to 1."""
        hedge = self._hedge(batch_seen)
        batch, speed, novelty = hedge.experts(self.learning_rate)
        inner_batch, inner_speed = hedge.inner(self.learning_rate)
        return batch + novelty * inner_batch, speed + novelty * inner_speed

    def _novelty(
        self, batch: Probabilities, speed: Probabilities, hedge: _Hedge
    ) -> dict[str, float]:
        novel = novel_mass(batch.keys(), speed)
        known_speed = _renormalised_known(batch.keys(), speed, novel)
        inner_batch, inner_speed = hedge.inner(self.learning_rate)
        mixed = {
            intent: (1.0 - novel) * (inner_batch * p + inner_speed * known_speed.get(intent, 0.0))
            for intent, p in batch.items()
        }
        for intent, p in speed.items():
            if intent not in batch:
                mixed[intent] = p
        return mixed

    def blend(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        batch_seen: bool = False,
    ) -> dict[str, float]:
        """The blended distribution over the union of both models' intents."""
        if not batch:
            return dict(speed or {})
        if not speed:
            return dict(batch)
        hedge = self._hedge(batch_seen)
        experts = (batch, speed, self._novelty(batch, speed, hedge))
        weights = hedge.experts(self.learning_rate)
        blended: dict[str, float] = {}
        for weight, expert in zip(weights, experts, strict=True):
            for intent, p in expert.items():
                blended[intent] = blended.get(intent, 0.0) + weight * p
        return blended

    def _row_weights(self, batch_seen: np.ndarray | None, n: int) -> tuple[np.ndarray, ...]:
        """Per row (as columns of shape (n, 1)): the three expert weights and the inner two,
        from the set each row's `batch_seen` picks."""
        new = [
            *self.new_texts.experts(self.learning_rate),
            *self.new_texts.inner(self.learning_rate),
        ]
        if batch_seen is None or not np.any(batch_seen):
            return tuple(np.full((n, 1), w) for w in new)
        seen = [
            *self.seen_texts.experts(self.learning_rate),
            *self.seen_texts.inner(self.learning_rate),
        ]
        mask = np.asarray(batch_seen, dtype=bool)[:, None]
        return tuple(np.where(mask, s, w) for s, w in zip(seen, new, strict=True))

    def blend_many(
        self,
        batch_classes: Sequence[Any],
        batch_matrix: np.ndarray | None,
        speed_classes: Sequence[Any],
        speed_matrix: np.ndarray | None,
        batch_seen: np.ndarray | None = None,
    ) -> tuple[list[Any], np.ndarray]:
        """`blend` over the rows of two probability matrices at once.

        Row i of the result, over the returned classes (the batch classes, then the speed-only
        ones), equals `blend` of row i of each side as dicts, with `batch_seen[i]` (all False
        when None). A side that is None or has no classes counts as absent, as an empty dict
        does in `blend`.
        """
        batch_absent = batch_matrix is None or not len(batch_classes)
        speed_absent = speed_matrix is None or not len(speed_classes)
        if batch_absent:
            if speed_absent:
                n = 0 if batch_matrix is None else len(batch_matrix)
                n = n if speed_matrix is None else len(speed_matrix)
                return [], np.zeros((n, 0))
            return list(speed_classes), np.array(speed_matrix, dtype=np.float64)
        if speed_absent:
            return list(batch_classes), np.array(batch_matrix, dtype=np.float64)
        batch = np.asarray(batch_matrix, dtype=np.float64)
        speed = np.asarray(speed_matrix, dtype=np.float64)
        n, n_batch = batch.shape
        index = {intent: i for i, intent in enumerate(batch_classes)}
        classes = list(batch_classes)
        speed_cols = []
        for intent in speed_classes:
            column = index.get(intent)
            if column is None:
                column = index[intent] = len(classes)
                classes.append(intent)
            speed_cols.append(column)
        speed_cols_arr = np.array(speed_cols, dtype=np.intp)
        known = speed_cols_arr < n_batch
        # Sequential sums, as Python's `sum` in `novel_mass` (numpy's `sum` is pairwise).
        novel_part = speed[:, ~known]
        novel = (
            np.minimum(1.0, np.cumsum(novel_part, axis=1)[:, -1])
            if novel_part.shape[1]
            else np.zeros(n)
        )
        rest = 1.0 - novel
        speed_u = np.zeros((n, len(classes)))
        speed_u[:, speed_cols_arr] = speed
        known_speed = np.zeros((n, n_batch))
        usable = rest > 1e-12
        known_speed[usable] = speed_u[usable, :n_batch] / rest[usable, None]
        w_batch, w_speed, w_novelty, inner_batch, inner_speed = self._row_weights(batch_seen, n)
        novelty = speed_u.copy()
        novelty[:, :n_batch] = (1.0 - novel)[:, None] * (
            inner_batch * batch + inner_speed * known_speed
        )
        blended = np.zeros((n, len(classes)))
        blended[:, :n_batch] = w_batch * batch
        blended += w_speed * speed_u
        blended += w_novelty * novelty
        return classes, blended

    def learn(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        intent: str,
        batch_seen: bool = False,
    ) -> None:
        """Update the weights for texts like this one (`batch_seen` or not) with each expert's
        log loss on a labelled event."""
        if not batch or not speed:
            return
        hedge = self._hedge(batch_seen)
        experts = (batch, speed, self._novelty(batch, speed, hedge))
        for i, expert in enumerate(experts):
            hedge.expert_loss[i] = self.decay * hedge.expert_loss[i] + _log_loss(
                expert.get(intent, 0.0)
            )
        if intent in batch:
            novel = novel_mass(batch.keys(), speed)
            known_speed = _renormalised_known(batch.keys(), speed, novel)
            for i, p in enumerate((batch[intent], known_speed.get(intent, 0.0))):
                hedge.inner_loss[i] = self.decay * hedge.inner_loss[i] + _log_loss(p)
        hedge.learnt += 1


def novel_mass(known: Set[Any], speed: Probabilities) -> float:
    """The speed model's probability that the intent is one the batch model does not know."""
    return min(1.0, sum(p for intent, p in speed.items() if intent not in known))


def _renormalised_known(known: Set[Any], speed: Probabilities, novel: float) -> dict[Any, float]:
    rest = 1.0 - novel
    if rest <= 1e-12:
        return {}
    return {intent: p / rest for intent, p in speed.items() if intent in known}
