"""A meta-estimator that fits on distinct rows weighted by their counts, so that the batch layer
trains on millions of repeated events at the cost of the distinct ones."""

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils.metadata_routing import get_routing_for_object
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    has_fit_parameter,
)

__all__ = [
    "COUNT_WEIGHTINGS",
    "MAX_EXPANDED_ROWS",
    "DistinctRowsClassifier",
    "check_sample_weight",
    "final_step",
]

COUNT_WEIGHTINGS = ("count", "log")
"""What a distinct pair's total weight can become before the fit (`DistinctRowsClassifier`)."""

MAX_EXPANDED_ROWS = 5_000_000
"""The most rows `DistinctRowsClassifier` expands distinct rows into, for an estimator that takes
no sample weights: each distinct row repeated by its count (divided by the counts' greatest
common divisor). Past it, the fit is refused rather than run out of memory."""


def _inner_has(method: str) -> Callable[[BaseEstimator], bool]:
    """For `available_if`: the wrapped estimator has `method`."""

    def check(self: BaseEstimator) -> bool:
        getattr(self.estimator, method)
        return True

    return check


class DistinctRowsClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """`estimator` fitted once per distinct (row, label) pair, weighted by the pair's total weight.

    Repeating a row k times is then exactly the same as giving it weight k, whatever the inner
    estimator does with rows (its cross-validation folds included), and a fit costs what the
    distinct rows cost. The weights are rescaled to average 1 per distinct pair, so
    regularisation is per distinct example: replaying the same history k times leaves the model
    unchanged, and a `C` chosen on the distinct data stays right. Pairs are fitted in sorted
    order, so the input's order does not matter either.

    Rows are texts (a 1-D sequence of strings, for a text pipeline) or rows of a 2-D array.
    Collapsing millions of texts here works but holds them all in memory: the batch layer counts
    them batch by batch first (`pipelines.batch.counts.count_examples`).

    The weights reach `estimator` by scikit-learn's own means, whatever it is made of:

    - its `fit` takes `sample_weight`: they are passed;
    - else (a `Pipeline`, a meta-estimator) if they can reach its final step: under metadata
      routing, every part of it whose `fit` takes `sample_weight` requests them, and the
      routers deliver them;
    - else the distinct rows are repeated by their counts (divided by the counts' greatest
      common divisor, so replays still change nothing), if the weights are whole numbers and
      the rows come to at most `MAX_EXPANDED_ROWS`; otherwise `fit` raises ValueError, since
      dropping the weights would silently train another model.

    How much a repeat counts is `count_weighting`'s choice: "count" weighs each pair by its
    total, exactly as its repetitions would; "log" weighs it 1 + log(total / smallest total),
    so a phrasing seen a thousand times weighs about 8 where one seen once weighs 1 (a popular
    query is one fact about language, not a thousand), and dividing by the smallest total keeps
    replays of the whole history from changing the model.

    Parameters
    ----------
    estimator
        A classifier; best one whose `fit` (or its final step's) takes `sample_weight`.
    count_weighting
        "count" or "log": what a pair's total weight becomes before the fit.

    Attributes
    ----------
    estimator_
        The clone of `estimator` fitted on the distinct pairs.
    classes_
        The labels, sorted, as `estimator_` has them.
    n_features_in_
        `estimator_`'s, for 2-D input.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = [[0.0], [0.0], [0.0], [1.0]], [0, 0, 0, 1]
    >>> repeated = DistinctRowsClassifier(LogisticRegression()).fit(X, y)
    >>> weighted = DistinctRowsClassifier(LogisticRegression()).fit(
    ...     [[1.0], [0.0]], [1, 0], sample_weight=[1, 3]
    ... )
    >>> bool(np.allclose(repeated.predict_proba(X), weighted.predict_proba(X)))
    True
    """

    def __init__(self, estimator: BaseEstimator, *, count_weighting: str = "count") -> None:
        self.estimator = estimator
        self.count_weighting = count_weighting

    def fit(self, X, y, sample_weight=None) -> "DistinctRowsClassifier":
        """Fit `estimator` on the distinct (row, label) pairs of `X`, `y`."""
        if y is None:
            name = type(self).__name__
            raise ValueError(f"{name} requires y to be passed, but the target y is None")
        X = check_array(X, ensure_2d=False, dtype=None)
        if X.ndim > 1 and X.dtype == object:
            X = X.astype(np.float64)  # rows are numbers; only 1-D input may be text
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        if self.count_weighting not in COUNT_WEIGHTINGS:
            raise ValueError(
                f"count_weighting must be one of {COUNT_WEIGHTINGS}; got {self.count_weighting!r}"
            )
        rows, labels, totals = _collapse(X, y, check_sample_weight(sample_weight, len(y)))
        if self.count_weighting == "log":
            totals = 1.0 + np.log(totals / totals.min())
        estimator = clone(self.estimator)
        _fit_weighted(estimator, rows, labels, totals)
        self.estimator_ = estimator
        self.classes_ = estimator.classes_
        return self

    @property
    def n_features_in_(self) -> int:
        return self.estimator_.n_features_in_

    def predict(self, X) -> np.ndarray:
        """`estimator_`'s predictions; a one-column DataFrame is read as its column."""
        check_is_fitted(self)
        return self.estimator_.predict(_single_column(X))

    @available_if(_inner_has("predict_proba"))
    def predict_proba(self, X) -> np.ndarray:
        """`estimator_`'s probabilities, one column per class of `classes_`."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(_single_column(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags = replace(inner.input_tags, sparse=False)
        tags.classifier_tags.poor_score = inner.classifier_tags.poor_score
        return tags


def _fit_weighted(estimator, rows: np.ndarray, labels: np.ndarray, totals: np.ndarray) -> None:
    """Fit `estimator` on distinct rows with their total weights, by the first of the ways
    `DistinctRowsClassifier` lists that it allows.

    A pipeline whose transformers take weights but whose classifier does not (a scaler before
    k-nearest neighbours) is fitted on repeated rows: weighting only the scaler would leave the
    classifier blind to them.
    """
    weights = totals / totals.mean()  # per distinct example: regularisation stays per example
    if has_fit_parameter(estimator, "sample_weight"):
        estimator.fit(rows, labels, sample_weight=weights)
        return
    with config_context(enable_metadata_routing=True):
        consumers = _weight_consumers(estimator)
        for part in consumers:
            part.set_fit_request(sample_weight=True)
        routing = get_routing_for_object(final_step(estimator))
        if routing.consumes("fit", ["sample_weight"]):
            estimator.fit(rows, labels, sample_weight=weights)
            return
        for part in consumers:  # weights that would not reach the classifier are not given
            part.set_fit_request(sample_weight=None)
    repeats = _whole_counts(totals, estimator)
    estimator.fit(np.repeat(rows, repeats, axis=0), np.repeat(labels, repeats))


def final_step(estimator):
    """The estimator a pipeline (nested or not) ends with; `estimator` itself otherwise."""
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def _weight_consumers(estimator) -> list:
    """`estimator`'s parts (itself included) whose `fit` takes `sample_weight` and that can
    request it (`set_fit_request`, under metadata routing)."""
    parts = [estimator, *estimator.get_params(deep=True).values()]
    return [
        part
        for part in parts
        if isinstance(part, BaseEstimator)
        and has_fit_parameter(part, "sample_weight")
        and callable(getattr(part, "set_fit_request", None))
    ]


def _whole_counts(totals: np.ndarray, estimator) -> np.ndarray:
    """How many times to repeat each distinct row for an estimator that takes no weights: the
    totals over their greatest common divisor; ValueError if they are not whole numbers or
    come to more than `MAX_EXPANDED_ROWS` rows."""
    name = type(estimator).__name__
    last = final_step(estimator)
    if last is not estimator:
        name = f"{name} (ending in {type(last).__name__})"
    counts = np.rint(totals)
    if not np.allclose(totals, counts, rtol=0, atol=1e-9):
        raise ValueError(
            f"{name} takes no sample_weight, and the weights are not whole counts, so they "
            "cannot stand for repeated rows: use an estimator whose fit takes sample_weight, "
            "or give counts"
        )
    counts = counts.astype(np.int64)
    counts //= math.gcd(*counts.tolist())
    if counts.sum() > MAX_EXPANDED_ROWS:
        raise ValueError(
            f"{name} takes no sample_weight, and repeating the distinct rows by their "
            f"counts would make {counts.sum()} rows, more than "
            f"MAX_EXPANDED_ROWS ({MAX_EXPANDED_ROWS}): use an estimator whose fit takes "
            "sample_weight"
        )
    return counts


def _single_column(X):
    """A one-column DataFrame (how MLflow's pyfunc flavour passes texts) as its column."""
    if hasattr(X, "columns") and len(X.columns) == 1:
        return X.iloc[:, 0].to_numpy()
    return X


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray:
    """`sample_weight` as floats, ones if None; ValueError unless finite, non-negative, one
    per sample."""
    if sample_weight is None:
        return np.ones(n_samples)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight has shape {weights.shape}; expected ({n_samples},)")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    return weights


def _collapse(
    X: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, label) pairs, sorted, with their summed weights.

    Pairs whose weights sum to zero are dropped: a zero weight means the row is not there.
    """
    _, row_ids = np.unique(X, axis=0 if X.ndim > 1 else None, return_inverse=True)
    labels, label_ids = np.unique(y, return_inverse=True)
    pair_ids = row_ids.reshape(-1) * len(labels) + label_ids
    _, first, inverse = np.unique(pair_ids, return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=weights)
    present = totals > 0
    if not present.any():
        raise ValueError("all sample weights are zero")
    first, totals = first[present], totals[present]
    return X[first], y[first], totals
