"""Blending the batch champion with the speed model, with weights learnt online.

The batch model only knows the intents it was trained on; the speed model learns new ones as
they arrive. Three experts answer each query:

- `batch`: the champion alone (an intent it never saw gets probability 0),
- `speed`: the speed model alone,
- `novelty`: the speed model says how likely the query is to be an intent the batch model has
  never seen (its novel mass); the rest of the mass is shared over the intents both know by an
  inner mixture of the two.

The blend is the Hedge mixture of the three: each expert's weight decays with its recent,
exponentially-weighted log loss (`models.losses.capped_log_loss`), learnt apart for texts the
batch model trained on and texts it has not, so the blend follows whichever view is doing best
now (batch before a drift, the speed side after it, the new batch model after a retrain).
Everything is prequential: predict, then learn.

There is one numeric path: rows of probabilities over two class lists (`blend_many`, and
`step` for one event of a prequential loop); the dict API (`blend`, `learn`) is a thin call
into it.
"""

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.losses import capped_log_loss

# Intent -> probability; keys are any hashable label, as in River.
Probabilities = Mapping[Any, float]

EXPERTS = ("batch", "speed", "novelty")
# Alignments of class lists kept per blender: a champion and a speed model give one, which
# changes only when a model learns a new intent or is replaced.
_ALIGNMENTS_KEPT = 8


def _softmin(losses: list[float], learning_rate: float) -> list[float]:
    best = min(losses)
    scores = [math.exp(-learning_rate * (loss - best)) for loss in losses]
    total = sum(scores)
    return [s / total for s in scores]


@dataclass(frozen=True)
class Alignment:
    """How a batch and a speed class list line up in the blend.

    Attributes
    ----------
    classes
        The blend's classes: the batch classes, then the speed-only ones.
    speed_columns
        The blend column of each speed class.
    novel_positions
        Positions, in the speed class list, of the classes the batch model does not know.
    index
        Class -> its blend column.
    speed_index
        Class -> its position in the speed class list.
    n_batch
        Number of batch classes: the blend's first `n_batch` columns are theirs.

    Examples
    --------
    >>> alignment = Alignment.of(["a", "b"], ["c", "a"])
    >>> alignment.classes, alignment.speed_columns.tolist(), alignment.novel_positions.tolist()
    (['a', 'b', 'c'], [2, 0], [0])
    """

    classes: list[Any]
    speed_columns: np.ndarray
    novel_positions: np.ndarray
    index: dict[Any, int]
    speed_index: dict[Any, int]
    n_batch: int

    @classmethod
    def of(cls, batch_classes: Sequence[Any], speed_classes: Sequence[Any]) -> "Alignment":
        """The alignment of two class lists."""
        index = {intent: i for i, intent in enumerate(batch_classes)}
        n_batch = len(index)
        classes = list(batch_classes)
        columns = []
        for intent in speed_classes:
            column = index.get(intent)
            if column is None:
                column = index[intent] = len(classes)
                classes.append(intent)
            columns.append(column)
        speed_columns = np.array(columns, dtype=np.intp)
        speed_index = {intent: i for i, intent in enumerate(speed_classes)}
        novel_positions = np.flatnonzero(speed_columns >= n_batch)
        return cls(classes, speed_columns, novel_positions, index, speed_index, n_batch)


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

    Parameters
    ----------
    learning_rate
        Hedge's learning rate: weights are `softmax(-learning_rate * discounted loss)`. Low, so
        the weights stay mixed.
    decay
        Discount of past losses per event, in (0, 1]: the memory is about `1 / (1 - decay)`
        events. Short, so that after a drift the blend stops trusting the old champion soon.

    Attributes
    ----------
    learning_rate, decay
        As given.
    new_texts, seen_texts
        The discounted losses for texts the batch model has not trained on, and has.
    learnt
        Number of events learnt (those where both models answered).
    layer_weights
        (batch, speed): each model's share of the blend for new texts.
    expert_weights
        The three experts' weights for new texts, by name.

    Examples
    --------
    >>> blender = HedgeBlender()
    >>> batch, speed = {"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.7, "c": 0.1}
    >>> for _ in range(50):
    ...     blender.learn(batch, speed, "a")
    >>> round(blender.layer_weights[0], 2), blender.weights_for(batch_seen=True)
    (0.99, (0.5, 0.5))
    >>> sorted(blender.expert_weights)
    ['batch', 'novelty', 'speed']
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
        self._alignments: dict[tuple, Alignment] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_alignments"]  # rebuilt on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore; a blender pickled before the two sets had one, which now serves both."""
        if "new_texts" not in state:
            hedge = _Hedge()
            hedge.expert_loss, hedge.inner_loss = state.pop("expert_loss"), state.pop("inner_loss")
            hedge.learnt = state.pop("learnt")
            state["new_texts"] = hedge
            state["seen_texts"] = copy.deepcopy(hedge)
            state["seen_texts"].learnt = 0  # the events were learnt once
        self.__dict__.update(state)
        self._alignments = {}

    def _hedge(self, batch_seen: bool) -> _Hedge:
        return self.seen_texts if batch_seen else self.new_texts

    @property
    def learnt(self) -> int:
        """Number of events learnt, over both sets of weights."""
        return self.new_texts.learnt + self.seen_texts.learnt

    @property
    def expert_weights(self) -> dict[str, float]:
        """The weight of each of `EXPERTS` for texts the batch model has not trained on."""
        weights = self.new_texts.experts(self.learning_rate)
        return dict(zip(EXPERTS, weights, strict=True))

    @property
    def layer_weights(self) -> tuple[float, float]:
        """(batch, speed) for texts the batch model has not trained on: `weights_for(False)`."""
        return self.weights_for(batch_seen=False)

    def weights_for(self, batch_seen: bool) -> tuple[float, float]:
        """How much of the blend each model carries, the novelty expert's share split by its
        inner mixture.

        Parameters
        ----------
        batch_seen
            Use the weights for texts the batch model trained on.

        Returns
        -------
        tuple of float
            (batch_weight, speed_weight), summing to 1.
        """
        hedge = self._hedge(batch_seen)
        batch, speed, novelty = hedge.experts(self.learning_rate)
        inner_batch, inner_speed = hedge.inner(self.learning_rate)
        return batch + novelty * inner_batch, speed + novelty * inner_speed

    def alignment(self, batch_classes: Sequence[Any], speed_classes: Sequence[Any]) -> Alignment:
        """`Alignment.of` two class lists, kept for the next call with the same lists."""
        key = (tuple(batch_classes), tuple(speed_classes))
        found = self._alignments.get(key)
        if found is None:
            if len(self._alignments) >= _ALIGNMENTS_KEPT:
                self._alignments.clear()
            found = self._alignments[key] = Alignment.of(batch_classes, speed_classes)
        return found

    def _row_weights(self, batch_seen: np.ndarray | None, n: int) -> tuple[Any, ...]:
        """The three expert weights and the inner two: numbers when every row uses the same
        set, else columns of shape (n, 1) from the set each row's `batch_seen` picks."""
        rate = self.learning_rate

        def of(hedge: _Hedge) -> list[float]:
            return [*hedge.experts(rate), *hedge.inner(rate)]

        if batch_seen is None or not np.any(batch_seen):
            return tuple(of(self.new_texts))
        if np.all(batch_seen):
            return tuple(of(self.seen_texts))
        mask = np.asarray(batch_seen, dtype=bool)[:, None]
        pairs = zip(of(self.seen_texts), of(self.new_texts), strict=True)
        return tuple(np.where(mask, seen, new) for seen, new in pairs)

    def _combine(
        self, alignment: Alignment, batch: np.ndarray, speed: np.ndarray, batch_seen
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The blend of each row over the blend's classes, with what a learning step reads its
        losses from: the speed rows on those classes, and on the batch classes the novelty
        expert and the speed model renormalised to them (on the speed-only classes the novelty
        expert is the speed model)."""
        n, n_batch = len(batch), alignment.n_batch
        novel = np.minimum(1.0, speed[:, alignment.novel_positions].sum(axis=1))
        rest = (1.0 - novel)[:, None]
        speed_all = np.zeros((n, len(alignment.classes)))
        speed_all[:, alignment.speed_columns] = speed
        known_speed = np.zeros((n, n_batch))
        np.divide(speed_all[:, :n_batch], rest, out=known_speed, where=rest > 1e-12)
        w_batch, w_speed, w_novelty, inner_batch, inner_speed = self._row_weights(batch_seen, n)
        novelty = rest * (inner_batch * batch + inner_speed * known_speed)
        blended = (w_speed + w_novelty) * speed_all
        blended[:, :n_batch] = (
            w_batch * batch + w_speed * speed_all[:, :n_batch] + w_novelty * novelty
        )
        return blended, speed_all, novelty, known_speed

    def blend_many(
        self,
        batch_classes: Sequence[Any],
        batch_matrix: np.ndarray | None,
        speed_classes: Sequence[Any],
        speed_matrix: np.ndarray | None,
        batch_seen: np.ndarray | None = None,
    ) -> tuple[list[Any], np.ndarray]:
        """The blend of each row of two probability matrices: the numbers every other method
        of the blender serves.

        Parameters
        ----------
        batch_classes, batch_matrix
            The champion's classes and its probabilities, one row per query in that order.
        speed_classes, speed_matrix
            The same for the speed model. A side that is None or has no classes is absent, and
            the other side's rows are the answer.
        batch_seen
            Per row, whether the batch model trained on the text: it picks the set of weights
            (all False when None).

        Returns
        -------
        classes : list
            The batch classes, then the speed-only ones.
        probabilities : numpy.ndarray
            One row per query over `classes`, each summing to 1.

        Examples
        --------
        >>> classes, rows = HedgeBlender().blend_many(["a", "b"], [[0.8, 0.2]], ["c"], [[1.0]])
        >>> classes, rows.round(2).tolist()
        (['a', 'b', 'c'], [[0.27, 0.07, 0.67]])
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
        alignment = self.alignment(batch_classes, speed_classes)
        batch = np.asarray(batch_matrix, dtype=np.float64)
        speed = np.asarray(speed_matrix, dtype=np.float64)
        return alignment.classes, self._combine(alignment, batch, speed, batch_seen)[0]

    def step(
        self,
        batch_classes: Sequence[Any],
        batch_row: np.ndarray | None,
        speed_classes: Sequence[Any],
        speed_row: np.ndarray | None,
        intent: Any,
        batch_seen: bool = False,
        learn: bool = True,
    ) -> tuple[Alignment, np.ndarray]:
        """One event of a prequential loop: blend one row of each side, then learn from it.

        Parameters
        ----------
        batch_classes, batch_row, speed_classes, speed_row
            As `blend_many`, with one row per side.
        intent
            The event's true intent.
        batch_seen
            Whether the batch model trained on the text: which set of weights is used and
            learnt.
        learn
            Add each expert's log loss on `intent` to those weights. Nothing is learnt unless
            both sides answered.

        Returns
        -------
        alignment : Alignment
            How the classes line up, so a caller scoring the event finds its columns.
        probabilities : numpy.ndarray
            The blend over `alignment.classes`, as predicted before learning.
        """
        alignment = self.alignment(batch_classes, speed_classes)
        seen = np.array([batch_seen])
        batch = None if batch_row is None else np.asarray(batch_row, dtype=np.float64)[None, :]
        speed = None if speed_row is None else np.asarray(speed_row, dtype=np.float64)[None, :]
        if batch is None or speed is None or not len(batch_classes) or not len(speed_classes):
            _, blended = self.blend_many(batch_classes, batch, speed_classes, speed, seen)
            return alignment, blended[0] if len(blended) else np.zeros(len(alignment.classes))
        blended, speed_all, novelty, known_speed = self._combine(alignment, batch, speed, seen)
        if learn:
            rows = (batch[0], speed_all[0], novelty[0], known_speed[0])
            self._learn(alignment, *rows, intent, batch_seen)
        return alignment, blended[0]

    def _learn(
        self,
        alignment: Alignment,
        batch: np.ndarray,
        speed_all: np.ndarray,
        novelty: np.ndarray,
        known_speed: np.ndarray,
        intent: Any,
        batch_seen: bool,
    ) -> None:
        """Add each expert's log loss on `intent` (and the inner mixture's, for an intent the
        batch model knows) to the weights of texts like this one."""
        hedge = self._hedge(batch_seen)
        column = alignment.index.get(intent)
        n_batch = alignment.n_batch
        if column is None:
            expert_p = (0.0, 0.0, 0.0)
        elif column < n_batch:
            expert_p = (float(batch[column]), float(speed_all[column]), float(novelty[column]))
            for i, p in enumerate((float(batch[column]), float(known_speed[column]))):
                hedge.inner_loss[i] = self.decay * hedge.inner_loss[i] + capped_log_loss(p)
        else:
            expert_p = (0.0, float(speed_all[column]), float(speed_all[column]))
        for i, p in enumerate(expert_p):
            hedge.expert_loss[i] = self.decay * hedge.expert_loss[i] + capped_log_loss(p)
        hedge.learnt += 1

    def blend(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        batch_seen: bool = False,
    ) -> dict[Any, float]:
        """The blended distribution over the union of both models' intents, as a dict:
        `blend_many` for one query.

        Parameters
        ----------
        batch, speed
            Each model's probabilities, intent -> probability; None or empty when it has none.
        batch_seen
            Whether the batch model trained on the text.

        Returns
        -------
        dict
            Intent -> probability: the batch intents, then the speed-only ones.
        """
        rows = _rows(batch, speed)
        alignment, row = self.step(*rows, intent=None, batch_seen=batch_seen, learn=False)
        return dict(zip(alignment.classes, row.tolist(), strict=True))

    def learn(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        intent: Any,
        batch_seen: bool = False,
    ) -> None:
        """Learn from one labelled event: `step` with dicts, the blend itself discarded.

        Parameters
        ----------
        batch, speed
            Each model's probabilities, as for `blend`, predicted before either learnt it.
        intent
            The event's true intent.
        batch_seen
            Whether the batch model trained on the text: which set of weights learns.
        """
        self.step(*_rows(batch, speed), intent=intent, batch_seen=batch_seen)


def _rows(
    batch: Probabilities | None, speed: Probabilities | None
) -> tuple[list, np.ndarray | None, list, np.ndarray | None]:
    """Dicts as (classes, row) pairs for `HedgeBlender.step`; an empty dict is an absent side."""
    batch_classes, speed_classes = list(batch or {}), list(speed or {})
    batch_row = np.fromiter(batch.values(), float, len(batch)) if batch else None
    speed_row = np.fromiter(speed.values(), float, len(speed)) if speed else None
    return batch_classes, batch_row, speed_classes, speed_row
