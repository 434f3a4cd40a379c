"""Whether a query is in scope at all: a decision fitted beside the batch model, on its answers to
texts it did not train on.

An intent classifier always names an intent, so a query that no intent covers gets a confident
wrong one. `ScopeClassifier` wraps any probabilistic classifier and fits, beside it, a
`ScopeDecision`: a logistic regression on two numbers of an answer (`ANSWER_FEATURES`: the top
in-scope probability, and the probability of the out-of-scope label when the classes have one)
that separates in-scope examples from out-of-scope ones, and a threshold on its score. Both are
fitted on out-of-fold answers, so the decision sees the model as a new query does. The
threshold catches as many out-of-scope examples as it can while the in-scope accuracy stays
within `accuracy_cost` of answering every in-scope query, and no more in-scope ones than that
takes: the cost of abstaining is a setting. Without out-of-scope examples the score is the top
probability alone, and the threshold as high as the cost allows.

The decision reads a probability row over any class list, so serving applies it to what it
serves: the champion's answer, or the blend that also holds the speed model's new intents. The
blend can be surer than the champion alone, so the score only rises with the top probability
and falls with the out-of-scope one (a fit that says otherwise falls back to the top
probability): a surer answer is never judged less in scope. Fitting the decision is part of
`fit`, so registering the model registers it and a retrain re-tunes it.
"""

import functools
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import check_cv
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)

from models.batch.distinct_rows import check_sample_weight
from models.model_spec import ModelSpec

__all__ = [
    "ANSWER_FEATURES",
    "OOS_LABEL",
    "ScopeClassifier",
    "ScopeDecision",
    "answer_features",
    "best_in_scope",
    "find_scope",
    "judge_blended_scope",
    "judge_scope",
    "out_of_scope_columns",
    "scope_figures",
    "scoped_model",
]

OOS_LABEL = "oos"
"""The out-of-scope label: CLINC150's own."""

ANSWER_FEATURES = ("top", "oos_probability")


def answer_features(classes: Sequence[Any], matrix: np.ndarray, oos_label: Any) -> np.ndarray:
    """(rows, 2) numbers of each probability row (`ANSWER_FEATURES`): its top in-scope
    probability, and the probability of `oos_label` (0 when it is not a class).

    >>> answer_features(["a", "b", "oos"], np.array([[0.5, 0.2, 0.3]]), "oos").tolist()
    [[0.5, 0.3]]
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    out = out_of_scope_columns(classes, oos_label)
    features = np.zeros((len(matrix), len(ANSWER_FEATURES)))
    if not out.all():
        features[:, 0] = (matrix[:, ~out] if out.any() else matrix).max(axis=1)
    if out.any():
        features[:, 1] = matrix[:, out].sum(axis=1)
    return features


def out_of_scope_columns(classes: Sequence[Any], oos_label: Any) -> np.ndarray:
    """Whether each of `classes` is `oos_label`, as a boolean array (kept for the last few
    class lists: a service asks about the same one on every request)."""
    return _out_columns(tuple(classes), oos_label)


@functools.lru_cache(maxsize=8)
def _out_columns(classes: tuple[Any, ...], oos_label: Any) -> np.ndarray:
    out = np.fromiter((c == oos_label for c in classes), dtype=bool, count=len(classes))
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class ScopeDecision:
    """A linear score of an answer's `answer_features`, and the threshold below which the
    query is judged out of scope.

    Attributes
    ----------
    oos_label
        The out-of-scope label.
    weights, intercept
        The score is `answer_features @ weights + intercept`.
    threshold
        Scores below it are out of scope (-inf: never).
    accuracy_cost
        The share of in-scope accuracy the threshold was allowed to cost.

    Examples
    --------
    >>> decision = ScopeDecision.top_probability("oos", threshold=0.58)
    >>> decision.in_scope(["a", "b"], np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])).tolist()
    [True, True, False]
    """

    oos_label: Any
    weights: tuple[float, ...]
    intercept: float
    threshold: float
    accuracy_cost: float = 0.0

    @classmethod
    def top_probability(cls, oos_label: Any, threshold: float = -np.inf) -> "ScopeDecision":
        """The decision that scores an answer by its top in-scope probability."""
        return cls(oos_label, (1.0, 0.0), 0.0, threshold)

    @classmethod
    def top_intent(cls, oos_label: Any) -> "ScopeDecision":
        """The decision of a model that learnt `oos_label` as one more intent: out of scope
        when that label is the most probable.

        >>> rows = np.array([[0.6, 0.4], [0.3, 0.7]])
        >>> ScopeDecision.top_intent("oos").in_scope(["a", "oos"], rows).tolist()
        [True, False]
        """
        return cls(oos_label, (1.0, -1.0), 0.0, 0.0)

    def scores(self, classes: Sequence[Any], matrix: np.ndarray) -> np.ndarray:
        """The score of each probability row over `classes`: higher is more in scope."""
        features = answer_features(classes, matrix, self.oos_label)
        return features @ np.asarray(self.weights) + self.intercept

    def in_scope(self, classes: Sequence[Any], matrix: np.ndarray) -> np.ndarray:
        """Whether each probability row over `classes` is an answer to an in-scope query."""
        return self.scores(classes, matrix) >= self.threshold

    @classmethod
    def fit(
        cls,
        classes: Sequence[Any],
        matrix: np.ndarray,
        y: Sequence[Any],
        sample_weight: np.ndarray | None = None,
        oos_label: Any = OOS_LABEL,
        accuracy_cost: float = 0.01,
    ) -> "ScopeDecision":
        """The decision for answers `matrix` (over `classes`) to queries of true labels `y`,
        answers the model gave without having trained on those queries.

        The score is a class-balanced logistic regression of in scope against `oos_label`
        when `y` has both and the fit rises with the top probability and falls with the
        out-of-scope one, else the top in-scope probability. The threshold turns away as many
        out-of-scope answers as keeping the weighted in-scope accuracy within `accuracy_cost` of
        its value without one allows, placed as low as turning those away permits (with no
        out-of-scope answers: as high as the cost allows).
        """
        if not 0.0 <= accuracy_cost <= 1.0:
            raise ValueError(f"accuracy_cost must lie in [0, 1]; got {accuracy_cost}")
        labels = np.asarray(y, dtype=object)
        weights = (
            np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, float)
        )
        features = answer_features(classes, matrix, oos_label)
        out = labels == oos_label
        decision = cls.top_probability(oos_label)
        if out.any() and not out.all():
            fitted = _logistic(features, ~out, weights, oos_label)
            if fitted.weights[0] > 0 and fitted.weights[1] <= 0:
                decision = fitted
        scores = features @ np.asarray(decision.weights) + decision.intercept
        in_classes = ~out_of_scope_columns(classes, oos_label)
        names = np.asarray(classes, dtype=object)[in_classes]
        right = ~out
        if len(names):
            right &= names[np.argmax(np.asarray(matrix)[:, in_classes], axis=1)] == labels
        highest = _threshold(scores[right], weights[right], accuracy_cost * weights[~out].sum())
        threshold = _lowest_alike(highest, scores[out], scores[right]) if out.any() else highest
        return cls(oos_label, decision.weights, decision.intercept, threshold, accuracy_cost)


def _logistic(features: np.ndarray, in_scope: np.ndarray, weights, oos_label) -> ScopeDecision:
    """A class-balanced logistic regression of `in_scope` on standardised `features`, the
    standardisation folded into its weights so that a score is one dot product."""
    mean = np.average(features, axis=0, weights=weights)
    scale = np.sqrt(np.average((features - mean) ** 2, axis=0, weights=weights))
    scale[scale == 0] = 1.0
    model = LogisticRegression(class_weight="balanced", max_iter=1000)
    model.fit((features - mean) / scale, in_scope, sample_weight=weights)
    coef = model.coef_[0] / scale
    intercept = float(model.intercept_[0] - coef @ mean)
    return ScopeDecision(oos_label, tuple(float(c) for c in coef), intercept, -np.inf)


def _lowest_alike(highest: float, out_scores: np.ndarray, right_scores: np.ndarray) -> float:
    """The threshold that turns away the same out-of-scope rows as `highest` and the fewest
    in-scope ones: midway between the highest out-of-scope score below `highest` and the next
    rightly answered score (or `highest`); -inf when `highest` catches no out-of-scope row."""
    caught = out_scores[out_scores < highest]
    if not len(caught):
        return -np.inf
    top_caught = float(caught.max())
    above = right_scores[right_scores > top_caught]
    upper = min(highest, float(above.min())) if len(above) else highest
    return (top_caught + upper) / 2


def _threshold(scores: np.ndarray, weights: np.ndarray, budget: float) -> float:
    """The highest threshold (midway between two scores) that turns away rightly answered
    in-scope rows (`scores`, `weights`) of total weight at most `budget`; -inf for none."""
    if not len(scores) or budget <= 0:
        return -np.inf
    order = np.argsort(scores, kind="stable")
    ranked, lost = scores[order], np.cumsum(weights[order])
    dropped = int(np.searchsorted(lost, budget, side="right"))  # the lowest rows within budget
    while 0 < dropped < len(ranked) and ranked[dropped] == ranked[dropped - 1]:
        dropped -= 1  # a tie cannot be split: keep the whole tie
    if dropped == 0:
        return -np.inf
    if dropped == len(ranked):
        return float(ranked[-1]) + 1.0
    return float((ranked[dropped - 1] + ranked[dropped]) / 2)


class ScopeClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """`estimator`, and a `ScopeDecision` fitted on its out-of-fold answers.

    The folds split distinct rows (texts), so a repeated text never sits on both sides of one.
    `predict_proba` and `predict` are `estimator_`'s; `in_scope` adds the decision.

    Parameters
    ----------
    estimator
        A classifier with `predict_proba`; its `fit` must take `sample_weight` if weights are
        given.
    oos_label
        The label of out-of-scope examples, if the training data has any.
    cv
        Folds of the out-of-fold answers (each costs a fit on its share of the rows), or a
        scikit-learn splitter or list of (train, test) splits.
    accuracy_cost
        The share of in-scope accuracy (on the out-of-fold answers) the decision may give up.
    random_state
        Seed of the folds.

    Attributes
    ----------
    estimator_
        The clone of `estimator` fitted on all rows.
    classes_
        `estimator_`'s classes.
    scope_
        The fitted `ScopeDecision` (never out of scope when the rows were too few for folds).

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = [[0.0], [0.1], [0.2], [1.0], [1.1], [1.2], [0.5], [0.55]]
    >>> y = ["a", "a", "a", "b", "b", "b", "oos", "oos"]
    >>> model = ScopeClassifier(LogisticRegression(), accuracy_cost=0.0).fit(X, y)
    >>> model.predict([[0.05], [1.15]]).tolist(), model.scope_.oos_label
    (['a', 'b'], 'oos')
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        *,
        oos_label: Any = OOS_LABEL,
        cv: int | Iterable = 2,
        accuracy_cost: float = 0.01,
        random_state: int | None = 0,
    ) -> None:
        self.estimator = estimator
        self.oos_label = oos_label
        self.cv = cv
        self.accuracy_cost = accuracy_cost
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "ScopeClassifier":
        """Fit `estimator` on each fold's training rows and on all rows, then the decision on
        the out-of-fold answers."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        X = check_array(X, ensure_2d=False, dtype=None)
        if X.ndim > 1 and X.dtype == object:
            X = X.astype(np.float64)  # rows are numbers; only 1-D input may be text
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        weights = None if sample_weight is None else check_sample_weight(sample_weight, len(y))
        self.estimator_ = _fit(self.estimator, X, y, weights, np.arange(len(y)))
        self.classes_ = self.estimator_.classes_
        folds = _folds(X, y, self.cv, self.random_state)
        answers = np.zeros((len(y), len(self.classes_)))
        answered = np.zeros(len(y), dtype=bool)
        column = {label: i for i, label in enumerate(self.classes_)}
        for train, test in folds:
            if np.unique(y[train]).size < 2:
                continue  # a classifier needs two classes
            model = _fit(self.estimator, X, y, weights, train)
            columns = np.array([column[label] for label in model.classes_], dtype=np.intp)
            answers[np.ix_(test, columns)] = model.predict_proba(X[test])
            answered[test] = True
        if not answered.any():
            self.scope_ = ScopeDecision.top_probability(self.oos_label)
            return self
        self.scope_ = ScopeDecision.fit(
            self.classes_,
            answers[answered],
            y[answered],
            None if weights is None else weights[answered],
            self.oos_label,
            self.accuracy_cost,
        )
        return self

    @available_if(lambda self: hasattr(self.estimator, "predict_proba"))
    def predict_proba(self, X) -> np.ndarray:
        """`estimator_`'s probabilities, one column per class of `classes_`."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """`estimator_`'s predictions."""
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def in_scope(self, X) -> np.ndarray:
        """Whether each row is judged in scope."""
        return self.scope_.in_scope(self.classes_, self.predict_proba(X))

    @property
    def n_features_in_(self) -> int:
        return self.estimator_.n_features_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def scoped_model(
    model: str = "models.batch.recipe:build_batch_model",
    model_params: Mapping[str, Any] | None = None,
    **scope_params: Any,
) -> ScopeClassifier:
    """The batch model built by `model` (a `models.model_spec.ModelSpec` factory) with
    `model_params`, wrapped in a `ScopeClassifier` with `scope_params`: as a factory
    (`BATCH_MODEL=models.scope:scoped_model`) it gives any configured model a scope decision.

    >>> scoped_model(model_params={"char_ngram_range": None}, accuracy_cost=0.02).accuracy_cost
    0.02
    """
    return ScopeClassifier(ModelSpec(model, dict(model_params or {})).build(), **scope_params)


def _fit(estimator, X, y, weights, rows) -> BaseEstimator:
    params = {} if weights is None else {"sample_weight": weights[rows]}
    return clone(estimator).fit(X[rows], y[rows], **params)


def _folds(X: np.ndarray, y: np.ndarray, cv, random_state) -> list[tuple[np.ndarray, np.ndarray]]:
    """`cv` (train, test) splits of the rows, each distinct row wholly on one side (none when
    there are fewer distinct rows than folds, or fewer than two folds); or a scikit-learn
    splitter's or list's splits as they are."""
    if not isinstance(cv, numbers.Integral):
        return list(check_cv(cv).split(X, y))
    folds = int(cv)
    _, group = np.unique(X, axis=0 if X.ndim > 1 else None, return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1 if len(group) else 0
    if folds < 2 or n_groups < folds:
        return []
    fold_of_group = np.random.RandomState(random_state).permutation(n_groups) % folds
    fold = fold_of_group[group]
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(folds)]


def find_scope(estimator: Any) -> ScopeDecision | None:
    """The `ScopeDecision` of `estimator` or of a model it wraps (`estimator_`), if any."""
    seen = 0
    while estimator is not None and seen < 8:
        decision = getattr(estimator, "scope_", None)
        if isinstance(decision, ScopeDecision):
            return decision
        estimator, seen = getattr(estimator, "estimator_", None), seen + 1
    return None


def best_in_scope(classes: Sequence[Any], matrix: np.ndarray, oos_label: Any) -> np.ndarray:
    """The column of each row's most probable in-scope class (-1 when every class is
    `oos_label`).

    >>> best_in_scope(["oos", "a", "b"], np.array([[0.7, 0.1, 0.2]]), "oos").tolist()
    [2]
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    out = out_of_scope_columns(classes, oos_label)
    if out.all():
        return np.full(len(matrix), -1, dtype=np.intp)
    return np.argmax(np.where(out, -np.inf, matrix), axis=1)


def judge_scope(
    classes: Sequence[Any],
    matrix: np.ndarray,
    decision: ScopeDecision | None,
    oos_label: Any = OOS_LABEL,
) -> np.ndarray:
    """Whether each probability row answers an in-scope query: by `decision` when there is
    one, else by `ScopeDecision.top_intent` (the out-of-scope label learnt as an intent)."""
    return (decision or ScopeDecision.top_intent(oos_label)).in_scope(classes, matrix)


def judge_blended_scope(
    classes: Sequence[Any],
    matrix: np.ndarray,
    decision: ScopeDecision | None,
    oos_label: Any,
    *,
    n_batch: int,
    batch_in_scope: np.ndarray | None,
    speed_seen: np.ndarray,
) -> np.ndarray:
    """Whether each blended row (over `classes`: the champion's `n_batch`, then the speed
    model's own) answers an in-scope query, given the champion's own judgement of each query
    (`batch_in_scope`, None without a champion). The blend is judged like any answer, and a
    query the champion judges out of scope stays out unless the speed model learnt its text or
    the blend's best intent is one the champion does not know: on its own intents the
    champion's abstention is the better informed (the speed model's share of a blend dilutes
    its out-of-scope probability), while a new intent is the speed layer's to name.

    >>> decision = ScopeDecision.top_probability("oos", threshold=0.5)
    >>> champion = np.array([[0.7, 0.2, 0.1], [0.3, 0.2, 0.5], [0.3, 0.2, 0.5]])
    >>> blend = np.array([[0.6, 0.1, 0.1, 0.2], [0.1, 0.1, 0.2, 0.6], [0.6, 0.1, 0.2, 0.1]])
    >>> judge_blended_scope(["a", "b", "oos", "new"], blend, decision, "oos", n_batch=3,
    ...     batch_in_scope=judge_scope(["a", "b", "oos"], champion, decision, "oos"),
    ...     speed_seen=np.zeros(3, dtype=bool)).tolist()
    [True, True, False]
    """
    in_scope = judge_scope(classes, matrix, decision, oos_label)
    if batch_in_scope is None:
        return in_scope
    new_intent = best_in_scope(classes, matrix, oos_label) >= n_batch
    return in_scope & (batch_in_scope | speed_seen | new_intent)


def scope_figures(
    classes: Sequence[Any],
    matrix: np.ndarray,
    y: Sequence[Any],
    decision: ScopeDecision | None,
    oos_label: Any = OOS_LABEL,
) -> dict[str, float]:
    """In-scope accuracy (judged in scope, and the best in-scope class right) and out-of-scope
    recall (judged out of scope), with how many queries each is over, for answers `matrix`
    over `classes` to queries of true labels `y`.

    >>> rows = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    >>> decision = ScopeDecision.top_probability("oos", 0.6)
    >>> scope_figures(["a", "b"], rows, ["a", "a", "oos"], decision)
    {'in_scope_accuracy': 0.5, 'oos_recall': 1.0, 'in_scope_queries': 2, 'oos_queries': 1}
    """
    in_scope = judge_scope(classes, matrix, decision, oos_label)
    labels = np.asarray([*classes, oos_label], dtype=object)
    best = labels[best_in_scope(classes, matrix, oos_label)]
    truth = np.asarray(y, dtype=object)
    out = truth == oos_label
    n_in, n_out = int((~out).sum()), int(out.sum())
    answered = int((in_scope & (best == truth) & ~out).sum())
    return {
        "in_scope_accuracy": answered / n_in if n_in else float("nan"),
        "oos_recall": int((~in_scope & out).sum()) / n_out if n_out else float("nan"),
        "in_scope_queries": n_in,
        "oos_queries": n_out,
    }
