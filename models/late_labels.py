"""Predictions kept until their label comes: late labels scored on what was predicted.

A query that arrives without its label is predicted at once by each view (the speed model, the
champion, the blend), and their answers are kept (`Prediction`) until a label for the query
comes, maybe much later (River's chantilly keeps `/predict` answers by id for its `/learn` the
same way). The label then scores those answers, teaches the blender from them and is learnt by
the speed model (`learn_late_label`): every score and every blend step rests on a prediction
made before the label existed, however late it came.

A kept row holds only the probabilities above `FLOOR` (and always its top intent): the project's
one loss is capped there (`models.losses.LOSS_CAP`) and the blend floors each probability at
it, so a probability at or below it scores and blends as 0 does. A kept row therefore scores
and teaches exactly as the full one, in the few entries most answers have above it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.blend import Blender
from models.losses import LOSS_CAP
from models.prequential import (
    Judged,
    ViewRows,
    ViewScores,
    judge_views,
    record_scope,
    record_views,
    speed_probability_matrix,
)
from models.scope import OOS_LABEL, ScopeDecision
from models.texts import TextMemories, TextMemory, text_key, text_keys

FLOOR = math.exp(-LOSS_CAP)
"""Probabilities at or below it score and blend as 0: a kept row leaves them out."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What each view answered to one query when it arrived, kept until its label comes.

    Attributes
    ----------
    speed_classes, batch_classes
        The speed model's and the champion's classes then (`batch_classes` None without a
        champion); answers given alike share one tuple.
    columns, values
        The kept entries of the speed row, then the champion's, then the blend's (its classes:
        `Blender.alignment` of the two lists), each as column and probability.
    lengths
        How many of the entries are the speed row's and the champion's.
    speed_seen, batch_seen
        Whether the speed model (the champion) had trained on the text then.
    judged
        Whether each view judged its answer in scope then (`models.prequential.judge_views`);
        None when no scope decision judged, or when either model had trained on the text.
    """

    speed_classes: tuple[Any, ...]
    batch_classes: tuple[Any, ...] | None
    columns: np.ndarray
    values: np.ndarray
    lengths: tuple[int, int]
    speed_seen: bool
    batch_seen: bool
    judged: Judged | None = None

    def rows(self, blend_width: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The speed, champion (None without one) and blend rows, full width again."""
        n_speed, n_batch = self.lengths
        end = n_speed + n_batch
        speed = _dense(self.columns[:n_speed], self.values[:n_speed], len(self.speed_classes))
        blend = _dense(self.columns[end:], self.values[end:], blend_width)
        if self.batch_classes is None:
            return speed, None, blend
        batch = _dense(self.columns[n_speed:end], self.values[n_speed:end], len(self.batch_classes))
        return speed, batch, blend


def _dense(columns: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    row = np.zeros(width)
    row[columns] = values
    return row


def _kept(matrix: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's columns above `FLOOR`, its top one always among them, and their values."""
    if not matrix.shape[1]:
        empty = np.zeros(0, dtype=np.int32)
        return [empty] * len(matrix), [np.zeros(0)] * len(matrix)
    keep = matrix > FLOOR
    keep[np.arange(len(matrix)), np.argmax(matrix, axis=1)] = True
    columns = [np.flatnonzero(row).astype(np.int32) for row in keep]
    return columns, [matrix[i, c] for i, c in enumerate(columns)]


class _Interned:
    """One tuple for equal class lists, so kept predictions share them (and pickle them once)."""

    def __init__(self) -> None:
        self._last: tuple[Any, ...] | None = None

    def __call__(self, classes: Sequence[Any]) -> tuple[Any, ...]:
        if self._last is None or tuple(classes) != self._last:
            self._last = tuple(classes)
        return self._last


_intern_speed, _intern_batch = _Interned(), _Interned()


def predict_queries(
    speed_model: Any,
    blender: Blender,
    texts: Sequence[str],
    batch: tuple[Sequence[Any], np.ndarray] | None,
    speed_texts: TextMemory | TextMemories,
    batch_texts: TextMemory | None,
    scope: ScopeDecision | None = None,
) -> list[Prediction]:
    """Each view's answer to each of `texts`, as kept for its label: one vectorised call per
    view, which is what predicting them one by one gives as long as no model learns between
    them.

    Parameters
    ----------
    speed_model
        The speed model (River's API); it answers, it does not learn.
    blender
        It blends the two answers with its weights as they are now.
    texts
        The queries.
    batch
        The champion's classes and its probabilities for `texts`, one row each; None before
        there is a champion.
    speed_texts, batch_texts
        The texts the speed model, and the champion, trained on.
    scope
        The champion's scope decision: with it, each view's judgement of a novel text's scope
        is made now, on the full answers, and kept for the label to score.
    """
    if not texts:
        return []
    keys = text_keys(texts)
    speed_seen = np.fromiter((speed_texts.contains_key(int(k)) for k in keys), bool, len(keys))
    batch_seen = np.zeros(len(texts), dtype=bool)
    if batch is not None and batch_texts is not None:
        batch_seen = batch_texts.contains_keys(keys)
    speed_classes, speed_matrix = speed_probability_matrix(
        speed_model, [{"text": text} for text in texts]
    )
    batch_classes, batch_matrix = batch if batch is not None else ((), None)
    blend_classes, blend_matrix = blender.blend_many(
        batch_classes, batch_matrix, speed_classes, speed_matrix, batch_seen, speed_seen
    )
    judged: list[Judged | None] = [None] * len(texts)
    if scope is not None:
        rows = ViewRows(
            speed_classes, speed_matrix, batch_classes, batch_matrix, blend_classes, blend_matrix
        )
        novel = ~(speed_seen | batch_seen)
        views = judge_views(scope, rows, speed_seen)
        judged = [j if n else None for j, n in zip(views, novel.tolist(), strict=True)]
    speed_tuple = _intern_speed(speed_classes)
    batch_tuple = _intern_batch(batch_classes) if batch is not None else None
    parts = [_kept(np.asarray(speed_matrix, dtype=np.float64))]
    if batch_matrix is not None:
        parts.append(_kept(np.asarray(batch_matrix, dtype=np.float64)))
    parts.append(_kept(blend_matrix))
    found = []
    for i in range(len(texts)):
        columns = [part[0][i] for part in parts]
        values = [part[1][i] for part in parts]
        n_batch = len(columns[1]) if batch_matrix is not None else 0
        found.append(
            Prediction(
                speed_tuple,
                batch_tuple,
                np.concatenate(columns),
                np.concatenate(values),
                (len(columns[0]), n_batch),
                bool(speed_seen[i]),
                bool(batch_seen[i]),
                judged[i],
            )
        )
    return found


def learn_late_label(
    prediction: Prediction,
    text: str,
    intent: str,
    blender: Blender,
    scores: ViewScores,
    learners: Sequence[Any],
    speed_texts: TextMemory | TextMemories,
    oos_label: Any = OOS_LABEL,
) -> bool | None:
    """Score a query's kept answers against its label (and the scope judgements made with them,
    `oos_label` naming the out-of-scope intent), teach the blender from them, then let each of
    `learners` (the speed models of the query's partition) learn the text.

    Returns whether the champion's top intent was right; None when there was no champion when
    the query arrived.
    """
    batch_classes = prediction.batch_classes or ()
    alignment = blender.alignment(batch_classes, prediction.speed_classes)
    speed_row, batch_row, blend_row = prediction.rows(len(alignment.classes))
    blender.step(
        batch_classes,
        batch_row,
        prediction.speed_classes,
        speed_row,
        intent,
        prediction.batch_seen,
        learn=batch_row is not None,
        speed_seen=prediction.speed_seen,
    )
    batch_right = record_views(
        scores,
        alignment,
        speed_row,
        blend_row,
        batch_row,
        intent,
        speed_seen=prediction.speed_seen,
        batch_seen=prediction.batch_seen,
    )
    if prediction.judged is not None:
        rows = ViewRows(
            prediction.speed_classes,
            speed_row,
            batch_classes,
            batch_row,
            alignment.classes,
            blend_row,
        )
        record_scope(scores, rows, prediction.judged, intent, oos_label)
    x = {"text": text}
    for learner in learners:
        learner.learn_one(x, intent)
    speed_texts.add_key(text_key(text))
    return batch_right
