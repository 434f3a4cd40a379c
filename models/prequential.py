"""One prequential step, the same for the live speed layer and the offline evaluation.

Each labelled event is first predicted by both models and scored in the three views (batch only,
speed only, blend), and only then learnt by the blender and the speed model, so every score is
on an event no model has learnt yet. Scores are split by whether each model had trained on the
event's text before (`models.texts`): a repeat measures memory, a first-seen text understanding.
Given the champion's scope decision, each view's judgement of whether a novel event is in scope
is scored too.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.blend import Alignment, Blender
from models.contracts import has_vectorised_proba
from models.metrics import SplitScore, row_outcome
from models.scope import ScopeDecision, best_in_scope, judge_blended_scope, judge_scope
from models.texts import TextMemories, TextMemory, text_key

log = logging.getLogger(__name__)


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
    """The speed model's classes and probabilities for one input `x`, as an array.

    Through its `predict_proba_array` when it has one (the project's `HashedTextNB`), else
    through River's `predict_proba_one`. River's `predict_proba_many` is not used for one
    input: a one-row DataFrame costs far more than the dict does, and the prequential loop must
    score each event before it learns it, so its events cannot be scored as a batch
    (`speed_probability_matrix` scores many).
    """
    fast = getattr(model, "predict_proba_array", None)
    if callable(fast):
        return fast(x)
    probabilities = model.predict_proba_one(x)
    return list(probabilities), np.fromiter(probabilities.values(), float, len(probabilities))


def speed_probability_matrix(model: Any, xs: Sequence[dict]) -> tuple[list[Any], np.ndarray]:
    """The speed model's classes and `(len(xs), classes)` probabilities for many inputs.

    By the fastest path the model has, all giving the same answers:

    1. its `predict_proba_matrix` (the project's `HashedTextNB`);
    2. River's `predict_proba_many` on a DataFrame of the inputs, when `has_vectorised_proba`
       and there is more than one input, and only while it agrees with `predict_proba_one`
       (see `_river_proba_many`);
    3. `predict_proba_one` per input, the dicts laid out as one matrix: the columns are the
       union of their classes in the order they first appear (each dict's own order when, as
       with a River classifier, every input gets the same classes); a class missing from one
       input's dict is a 0 in its row.
    """
    matrix = getattr(model, "predict_proba_matrix", None)
    if callable(matrix):
        classes, probabilities = matrix(xs)
        return list(classes), probabilities
    if len(xs) > 1 and has_vectorised_proba(model):
        vectorised = _river_proba_many(model, xs)
        if vectorised is not None:
            return vectorised
    return _dicts_as_matrix([model.predict_proba_one(x) for x in xs])


def _dicts_as_matrix(rows: Sequence[Mapping[Any, float]]) -> tuple[list[Any], np.ndarray]:
    column: dict[Any, int] = {}
    for row in rows:
        for intent in row:
            column.setdefault(intent, len(column))
    matrix = np.zeros((len(rows), len(column)))
    for i, row in enumerate(rows):
        for intent, p in row.items():
            matrix[i, column[intent]] = p
    return list(column), matrix


# Kinds of model (the types of a pipeline's steps) whose `predict_proba_many` disagreed with
# their `predict_proba_one` or failed: they are scored input by input from then on.
_UNTRUSTED_MANY: set[tuple[type, ...]] = set()
# Agreement is judged on log-probabilities, where a wrong class shows however small its
# probability; River computes `predict_proba_many` in float32, some 1e-5 off in that scale.
_LOG_RTOL, _LOG_ATOL = 1e-5, 1e-3
_TINY = 1e-300


def _river_proba_many(model: Any, xs: Sequence[dict]) -> tuple[list[Any], np.ndarray] | None:
    """River's `predict_proba_many` as (classes, matrix), or None to score input by input.

    Each answer is spot-checked against `predict_proba_one` on two of its rows, the longest
    text and the least certain answer, which costs two inputs' scoring: it catches classes
    mislabelled or mis-scored for every row, not an error confined to other rows. A kind of
    model whose answer disagrees, or whose call fails, is not asked again. River 0.26's own
    `MultinomialNB` is one: trained by `learn_one`, its `predict_proba_many` lines up per-class
    tables that keep the classes in different orders (River's test suite skips that
    comparison), so `models.alternatives.river_naive_bayes` is scored input by input.
    """
    kind = _model_kind(model)
    if kind in _UNTRUSTED_MANY:
        return None
    try:
        frame = model.predict_proba_many(pd.DataFrame(list(xs)))
        classes = list(frame.columns)
        matrix = frame.to_numpy(dtype=float)
    except Exception as exc:
        _distrust(kind, f"it failed ({type(exc).__name__}: {exc})")
        return None
    if matrix.shape != (len(xs), len(classes)):
        _distrust(kind, f"it answered {matrix.shape} for {len(xs)} inputs")
        return None
    longest = max(range(len(xs)), key=lambda i: len(str(xs[i].get("text", ""))))
    least_certain = int(np.argmin(matrix.max(axis=1))) if classes else longest
    for row in dict.fromkeys((longest, least_certain)):
        expected = model.predict_proba_one(xs[row])
        if set(expected) != set(classes) or not _same_logs(
            matrix[row], [expected[c] for c in classes]
        ):
            _distrust(kind, "it disagrees with predict_proba_one")
            return None
    return classes, matrix


def _same_logs(got: np.ndarray, expected: Sequence[float]) -> bool:
    logs = np.log(np.maximum(got, _TINY))
    expected_logs = np.log(np.maximum(np.asarray(expected, dtype=float), _TINY))
    return bool(np.allclose(logs, expected_logs, rtol=_LOG_RTOL, atol=_LOG_ATOL))


def _model_kind(model: Any) -> tuple[type, ...]:
    steps = getattr(model, "steps", None)
    if isinstance(steps, dict):
        return (type(model), *(type(step) for step in steps.values()))
    return (type(model),)


def _distrust(kind: tuple[type, ...], why: str) -> None:
    _UNTRUSTED_MANY.add(kind)
    log.warning(
        "not using predict_proba_many of %s: %s; scoring input by input instead",
        " | ".join(t.__name__ for t in kind[1:] or kind),
        why,
    )


def prequential_step(
    speed_model: Any,
    blender: Blender,
    scores: ViewScores,
    text: str,
    intent: str,
    batch: BatchAnswer | None,
    speed_texts: TextMemory | TextMemories,
    batch_texts: TextMemory | None,
    learn: bool = True,
    learners: Sequence[Any] = (),
    scope: ScopeDecision | None = None,
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
    learners
        Further models that learn the event too: a partition's own model, when `speed_model`
        is the merged view a worker of a consumer group predicts with.
    scope
        The champion's scope decision: with it, each view's judgement of a novel event's scope
        is scored (`SplitScore.scope`); the speed model alone judges by its top intent.

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
        speed_seen=speed_seen,
    )
    batch_right = record_views(
        scores,
        alignment,
        speed_row,
        blended,
        batch_row,
        intent,
        speed_seen=speed_seen,
        batch_seen=batch_seen,
    )
    if scope is not None and not seen_by_any:
        rows = ViewRows(
            speed_classes, speed_row, batch_classes, batch_row, alignment.classes, blended
        )
        judged = judge_views(scope, rows.as_matrices(), np.array([speed_seen]))
        record_scope(scores, rows, judged[0], intent, scope.oos_label)
    if learn:
        speed_model.learn_one(x, intent)
        for learner in learners:
            learner.learn_one(x, intent)
        speed_texts.add_key(key)
    return batch_right


def record_views(
    scores: ViewScores,
    alignment: Alignment,
    speed_row: np.ndarray,
    blended: np.ndarray,
    batch_row: np.ndarray | None,
    intent: str,
    *,
    speed_seen: bool,
    batch_seen: bool,
) -> bool | None:
    """Score the three views' answers to one labelled event (`alignment` lines up their
    classes, `blended` is over `alignment.classes`); returns whether the champion's top intent
    was right, None without a champion."""
    seen_by_any = speed_seen or batch_seen
    speed_right, speed_p = row_outcome(speed_row, alignment.speed_index.get(intent))
    scores.speed.record(speed_right, speed_p, seen=speed_seen, seen_by_any=seen_by_any)
    blend_right, blend_p = row_outcome(blended, alignment.index.get(intent))
    scores.blend.record(blend_right, blend_p, seen=seen_by_any, seen_by_any=seen_by_any)
    if batch_row is None:
        return None
    column = alignment.index.get(intent)
    known = column if column is not None and column < alignment.n_batch else None
    batch_right, batch_p = row_outcome(batch_row, known)
    scores.batch.record(batch_right, batch_p, seen=batch_seen, seen_by_any=seen_by_any)
    return batch_right


@dataclass(frozen=True, slots=True)
class ViewRows:
    """Each view's classes and its answer (one row, or a matrix of rows): the speed model's, the
    champion's (None without one) and the blend's, whose classes begin with the champion's."""

    speed_classes: Sequence[Any]
    speed: np.ndarray
    batch_classes: Sequence[Any]
    batch: np.ndarray | None
    blend_classes: Sequence[Any]
    blend: np.ndarray

    def as_matrices(self) -> "ViewRows":
        """The same answers as one-row matrices."""

        def matrix(row: np.ndarray) -> np.ndarray:
            return np.asarray(row, dtype=np.float64).reshape(1, -1)

        return ViewRows(
            self.speed_classes,
            matrix(self.speed),
            self.batch_classes,
            None if self.batch is None else matrix(self.batch),
            self.blend_classes,
            matrix(self.blend),
        )


Judged = tuple[bool | None, bool | None, bool | None]
"""Whether the speed model, the champion and the blend judged one answer in scope (None: that
view had no answer)."""


def judge_views(scope: ScopeDecision, rows: ViewRows, speed_seen: np.ndarray) -> list[Judged]:
    """Each view's judgement of each row of `rows` (matrices): the champion and the blend by
    the champion's `scope` decision, the blend as serving judges it (`judge_blended_scope`),
    the speed model, which has none, by its top intent."""
    oos = scope.oos_label
    n = len(rows.blend)
    unanswered = np.full(n, None, dtype=object)
    speed = (
        judge_scope(rows.speed_classes, rows.speed, None, oos)
        if len(rows.speed_classes)
        else unanswered
    )
    batch = (
        judge_scope(rows.batch_classes, rows.batch, scope, oos)
        if rows.batch is not None
        else unanswered
    )
    blend = (
        judge_blended_scope(
            rows.blend_classes,
            rows.blend,
            scope,
            oos,
            n_batch=len(rows.batch_classes),
            batch_in_scope=None if rows.batch is None else batch,
            speed_seen=speed_seen,
        )
        if len(rows.blend_classes)
        else unanswered
    )
    return [
        (_flag(a), _flag(b), _flag(c))
        for a, b, c in zip(speed.tolist(), batch.tolist(), blend.tolist(), strict=True)
    ]


def _flag(judged: object) -> bool | None:
    return None if judged is None else bool(judged)


def record_scope(
    scores: ViewScores, rows: ViewRows, judged: Judged, intent: str, oos_label: Any
) -> None:
    """Score each view's judgement `judged` of its answer in `rows` (one row each) against the
    event's `intent` (`SplitScore.scope`)."""
    views = (
        (scores.speed, rows.speed_classes, rows.speed),
        (scores.batch, rows.batch_classes, rows.batch),
        (scores.blend, rows.blend_classes, rows.blend),
    )
    for (score, classes, row), in_scope in zip(views, judged, strict=True):
        if in_scope is None or row is None or not len(classes):
            continue
        matrix = np.asarray(row, dtype=np.float64)[None, :]
        best = int(best_in_scope(classes, matrix, oos_label)[0])
        score.scope.record(
            judged_in_scope=in_scope,
            right=best >= 0 and classes[best] == intent,
            out_of_scope=intent == oos_label,
        )
