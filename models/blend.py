"""Blending the batch champion with the speed model, with weights learnt online.

The batch model only knows the intents it was trained on; the speed model learns new ones as
they arrive. The blend is a log-linear pool of the two, a weighted geometric mean renormalised:

    log p(k) = a log p_batch(k) + b log p_speed(k)
               + c_batch [k unknown to the batch model] + c_speed [k unknown to the speed model]
               + bias(k) + a constant per query

Probabilities are floored at `models.losses.LOSS_CAP`'s, and a model has no opinion on an intent
it does not know: the other model's probability stands in for its own there, and `c_batch`,
`c_speed` learn how much more or less likely such intents are. A linear mixture (this project's
Hedge blend before) is as sure as its surest part, so a champion's confident mistake on a text
of an intent it never saw outweighs a young speed model's right but flat answer; in a product a
low weight silences a model and agreement sharpens.

The pool's weights (a, b, c_batch, c_speed) are learnt apart for four kinds of text: whether the
batch model trained on it and whether the speed model did. A model all but never errs on a text
it trained on, and most events are such repeats; weights learnt over all events together would
trust memory on new texts. The per-intent `bias` follows how often each intent is asked now (a
new intent arriving, one falling out of use); it is shared by all kinds. Everything is learnt by
one stochastic gradient step on the log loss of each labelled event, predicted before its label
was known (prequential). A new blender trusts the champion alone until events say otherwise.

There is one numeric path: rows of probabilities over two class lists (`blend_many`, and `step`
for one event of a prequential loop); the dict API (`blend`, `learn`) is a thin call into it.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.losses import LOSS_CAP

# Intent -> probability; keys are any hashable label, as in River.
Probabilities = Mapping[Any, float]

# The pool's weights, in this order, per kind of text.
POOL_WEIGHTS = ("batch", "speed", "unknown_to_batch", "unknown_to_speed")
_START = (1.0, 0.0, 0.0, 0.0)  # the champion alone
_FLOOR = math.exp(-LOSS_CAP)
# Alignments of class lists kept per blender: a champion and a speed model give one, which
# changes only when a model learns a new intent or is replaced.
_ALIGNMENTS_KEPT = 8


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

    @property
    def unknown(self) -> np.ndarray:
        """(2, classes): whether each blend class is unknown to the batch model, and to the
        speed model."""
        unknown = np.zeros((2, len(self.classes)))
        unknown[0, self.n_batch :] = 1.0
        unknown[1] = 1.0
        unknown[1, self.speed_columns] = 0.0
        return unknown


@dataclass(frozen=True)
class _Aligned:
    """An alignment with what the blender adds to it: the class-unknown indicators and each
    class's row in the blender's per-intent biases."""

    alignment: Alignment
    unknown: np.ndarray
    intent_rows: np.ndarray


class Blender:
    """A log-linear pool of the batch and speed models, its weights learnt online per kind of
    text (which model trained on it), with a per-intent bias.

    Parameters
    ----------
    learning_rate
        Step size of the two models' weights in the pool.
    unknown_learning_rate
        Step size of the weights of intents unknown to one model: higher, so that the pool
        soon learns that a new intent has arrived.
    intent_learning_rate
        Step size of the per-intent biases.

    Attributes
    ----------
    learning_rate, unknown_learning_rate, intent_learning_rate
        As given.
    pools
        (2, 2, 4) array: the weights (`POOL_WEIGHTS`) for `[batch_seen][speed_seen]`.
    learnt
        Number of events learnt (those where both models answered).
    layer_weights
        (batch, speed): each model's share of the pool for texts neither trained on.

    Examples
    --------
    >>> blender = Blender()
    >>> batch, speed = {"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.7, "c": 0.1}
    >>> blender.layer_weights
    (1.0, 0.0)
    >>> for _ in range(50):
    ...     blender.learn(batch, {"a": 0.1, "b": 0.2, "c": 0.7}, "c")
    >>> p = blender.blend(batch, {"a": 0.1, "b": 0.2, "c": 0.7})
    >>> max(p, key=p.get), round(sum(p.values()), 6)
    ('c', 1.0)
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        unknown_learning_rate: float = 0.2,
        intent_learning_rate: float = 0.1,
    ) -> None:
        if min(learning_rate, unknown_learning_rate) <= 0 or intent_learning_rate < 0:
            raise ValueError("the learning rates must be > 0 (the intents' >= 0)")
        self.learning_rate = learning_rate
        self.unknown_learning_rate = unknown_learning_rate
        self.intent_learning_rate = intent_learning_rate
        self.pools = np.tile(np.array(_START), (2, 2, 1))
        self.learnt = 0
        self._intent_row: dict[Any, int] = {}
        self._bias = np.zeros(0)
        self._aligned: dict[tuple, _Aligned] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_aligned"]  # rebuilt on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore; a blender pickled by the Hedge blend before this one starts afresh, as
        its weights mean nothing here."""
        if "pools" not in state:
            state = Blender().__getstate__()
        self.__dict__.update(state)
        self._aligned = {}

    def weights_for(self, batch_seen: bool, speed_seen: bool = False) -> tuple[float, float]:
        """How much each model counts in the pool for a kind of text: its weight over both,
        negative weights read as 0.

        Returns
        -------
        tuple of float
            (batch_weight, speed_weight), summing to 1 (halves when both are 0).
        """
        batch, speed = np.maximum(self.pools[int(batch_seen), int(speed_seen), :2], 0.0)
        total = batch + speed
        if total <= 0:
            return 0.5, 0.5
        return float(batch / total), float(speed / total)

    @property
    def layer_weights(self) -> tuple[float, float]:
        """(batch, speed) for texts neither model trained on: `weights_for(False, False)`."""
        return self.weights_for(batch_seen=False, speed_seen=False)

    def alignment(self, batch_classes: Sequence[Any], speed_classes: Sequence[Any]) -> Alignment:
        """`Alignment.of` two class lists, kept for the next call with the same lists."""
        return self._aligned_for(batch_classes, speed_classes).alignment

    def _aligned_for(self, batch_classes: Sequence[Any], speed_classes: Sequence[Any]) -> _Aligned:
        key = (tuple(batch_classes), tuple(speed_classes))
        found = self._aligned.get(key)
        if found is None:
            if len(self._aligned) >= _ALIGNMENTS_KEPT:
                self._aligned.clear()
            alignment = Alignment.of(batch_classes, speed_classes)
            for intent in alignment.classes:
                self._intent_row.setdefault(intent, len(self._intent_row))
            if len(self._bias) < len(self._intent_row):
                grown = np.zeros(len(self._intent_row))
                grown[: len(self._bias)] = self._bias
                self._bias = grown
            rows = np.fromiter((self._intent_row[c] for c in alignment.classes), np.intp)
            found = self._aligned[key] = _Aligned(alignment, alignment.unknown, rows)
        return found

    def _pool(
        self,
        aligned: _Aligned,
        batch: np.ndarray,
        speed: np.ndarray,
        batch_seen: np.ndarray,
        speed_seen: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pooled rows over the blend's classes, with the log-probabilities of each model
        over those classes that they came from (the other model's where one does not know a
        class)."""
        alignment = aligned.alignment
        n_batch, columns = alignment.n_batch, alignment.speed_columns
        log_speed = np.empty((len(batch), len(alignment.classes)))
        log_speed[:, columns] = np.log(np.maximum(speed, _FLOOR))
        log_batch = log_speed.copy()  # the speed model's where the batch model has no opinion
        log_batch[:, :n_batch] = np.log(np.maximum(batch, _FLOOR))
        unknown_to_speed = aligned.unknown[1] > 0
        log_speed[:, unknown_to_speed] = log_batch[:, unknown_to_speed]
        weights = self.pools[batch_seen.astype(np.intp), speed_seen.astype(np.intp)]
        scores = weights[:, 0:1] * log_batch + weights[:, 1:2] * log_speed
        scores += weights[:, 2:] @ aligned.unknown + self._bias[aligned.intent_rows]
        scores -= scores.max(axis=1, keepdims=True)
        pooled = np.exp(scores)
        pooled /= pooled.sum(axis=1, keepdims=True)
        return pooled, log_batch, log_speed

    def blend_many(
        self,
        batch_classes: Sequence[Any],
        batch_matrix: np.ndarray | None,
        speed_classes: Sequence[Any],
        speed_matrix: np.ndarray | None,
        batch_seen: np.ndarray | None = None,
        speed_seen: np.ndarray | None = None,
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
        batch_seen, speed_seen
            Per row, whether the batch (speed) model trained on the text: they pick the pool's
            weights (all False when None).

        Returns
        -------
        classes : list
            The batch classes, then the speed-only ones.
        probabilities : numpy.ndarray
            One row per query over `classes`, each summing to 1.

        Examples
        --------
        >>> classes, rows = Blender().blend_many(["a", "b"], [[0.8, 0.2]], ["c"], [[1.0]])
        >>> classes, rows.round(2).tolist()
        (['a', 'b', 'c'], [[0.4, 0.1, 0.5]])
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
        aligned = self._aligned_for(batch_classes, speed_classes)
        batch = np.asarray(batch_matrix, dtype=np.float64)
        speed = np.asarray(speed_matrix, dtype=np.float64)
        flags = _flags(batch_seen, len(batch)), _flags(speed_seen, len(batch))
        return aligned.alignment.classes, self._pool(aligned, batch, speed, *flags)[0]

    def step(
        self,
        batch_classes: Sequence[Any],
        batch_row: np.ndarray | None,
        speed_classes: Sequence[Any],
        speed_row: np.ndarray | None,
        intent: Any,
        batch_seen: bool = False,
        learn: bool = True,
        speed_seen: bool = False,
    ) -> tuple[Alignment, np.ndarray]:
        """One event of a prequential loop: blend one row of each side, then learn from it.

        Parameters
        ----------
        batch_classes, batch_row, speed_classes, speed_row
            As `blend_many`, with one row per side.
        intent
            The event's true intent.
        batch_seen, speed_seen
            Whether the batch (speed) model trained on the text: which weights are used and
            learnt.
        learn
            Take a gradient step on the log loss of `intent`. Nothing is learnt unless both
            sides answered.

        Returns
        -------
        alignment : Alignment
            How the classes line up, so a caller scoring the event finds its columns.
        probabilities : numpy.ndarray
            The blend over `alignment.classes`, as predicted before learning.
        """
        aligned = self._aligned_for(batch_classes, speed_classes)
        alignment = aligned.alignment
        batch = None if batch_row is None else np.asarray(batch_row, dtype=np.float64)[None, :]
        speed = None if speed_row is None else np.asarray(speed_row, dtype=np.float64)[None, :]
        if batch is None or speed is None or not len(batch_classes) or not len(speed_classes):
            _, blended = self.blend_many(batch_classes, batch, speed_classes, speed)
            return alignment, blended[0] if len(blended) else np.zeros(len(alignment.classes))
        flags = np.array([batch_seen]), np.array([speed_seen])
        pooled, log_batch, log_speed = self._pool(aligned, batch, speed, *flags)
        column = alignment.index.get(intent)
        if learn:
            self.learnt += 1
            if column is not None:  # an intent neither model knows teaches the pool nothing
                features = np.vstack([log_batch[0], log_speed[0], aligned.unknown])
                self._learn(aligned, pooled[0], features, column, batch_seen, speed_seen)
        return alignment, pooled[0]

    def _learn(
        self,
        aligned: _Aligned,
        pooled: np.ndarray,
        features: np.ndarray,
        column: int,
        batch_seen: bool,
        speed_seen: bool,
    ) -> None:
        """One gradient step on -log pooled[column]: the pool's weights for this kind of text
        (`features`: one row per weight, one column per class), and every intent's bias."""
        residual = pooled.copy()
        residual[column] -= 1.0
        rates = np.repeat([self.learning_rate, self.unknown_learning_rate], 2)
        self.pools[int(batch_seen), int(speed_seen)] -= rates * (features @ residual)
        self._bias[aligned.intent_rows] -= self.intent_learning_rate * residual

    def blend(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        batch_seen: bool = False,
        speed_seen: bool = False,
    ) -> dict[Any, float]:
        """The blended distribution over the union of both models' intents, as a dict:
        `blend_many` for one query.

        Parameters
        ----------
        batch, speed
            Each model's probabilities, intent -> probability; None or empty when it has none.
        batch_seen, speed_seen
            Whether the batch (speed) model trained on the text.

        Returns
        -------
        dict
            Intent -> probability: the batch intents, then the speed-only ones.
        """
        rows = _rows(batch, speed)
        alignment, row = self.step(
            *rows, intent=None, batch_seen=batch_seen, learn=False, speed_seen=speed_seen
        )
        return dict(zip(alignment.classes, row.tolist(), strict=True))

    def learn(
        self,
        batch: Probabilities | None,
        speed: Probabilities | None,
        intent: Any,
        batch_seen: bool = False,
        speed_seen: bool = False,
    ) -> None:
        """Learn from one labelled event: `step` with dicts, the blend itself discarded.

        Parameters
        ----------
        batch, speed
            Each model's probabilities, as for `blend`, predicted before either learnt it.
        intent
            The event's true intent.
        batch_seen, speed_seen
            Whether the batch (speed) model trained on the text: which weights learn.
        """
        self.step(*_rows(batch, speed), intent=intent, batch_seen=batch_seen, speed_seen=speed_seen)


HedgeBlender = Blender
"""The blender's former name: snapshots pickled under it load (as a fresh `Blender`)."""


def _flags(flags: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool) if flags is None else np.asarray(flags, dtype=bool)


def _rows(
    batch: Probabilities | None, speed: Probabilities | None
) -> tuple[list, np.ndarray | None, list, np.ndarray | None]:
    """Dicts as (classes, row) pairs for `Blender.step`; an empty dict is an absent side."""
    batch_classes, speed_classes = list(batch or {}), list(speed or {})
    batch_row = np.fromiter(batch.values(), float, len(batch)) if batch else None
    speed_row = np.fromiter(speed.values(), float, len(speed)) if speed else None
    return batch_classes, batch_row, speed_classes, speed_row
