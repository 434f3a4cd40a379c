"""A one-vs-rest linear classifier whose classes are fitted in groups on threads, so that a
solver that runs its one-vs-rest problems one after another (liblinear) uses every core."""

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.utils import get_tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from models.batch.distinct_rows import check_sample_weight

__all__ = ["ThreadedOneVsRest"]

# The label every class outside a group takes while that group is fitted: below every code.
_REST = -1


class ThreadedOneVsRest(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """`estimator`, a one-vs-rest linear classifier, fitted as `n_jobs` groups of classes at once.

    Each group is one fit of a clone of `estimator` on all rows, where the classes outside the
    group share one extra label: its one-vs-rest problems are then exactly those of the group's
    classes in a fit on every class, and the extra label's problem is dropped. The groups' fits
    run on threads (liblinear releases the GIL), each converting the data once, instead of
    once per class as `OneVsRestClassifier` would. With two classes there is one problem, and
    one fit.

    Parameters
    ----------
    estimator
        A linear classifier fitted one-vs-rest, with `coef_` and `intercept_` (`LinearSVC`).
    n_jobs
        Groups of classes, fitted on as many threads.

    Attributes
    ----------
    classes_
        The labels, sorted.
    coef_
        One row of weights per class (a single row for two classes), as `estimator`'s.
    intercept_
        One intercept per row of `coef_`.
    n_features_in_
        Number of features seen in `fit`.

    Examples
    --------
    >>> from sklearn.svm import LinearSVC
    >>> X = [[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.1, 0.0], [0.0, 1.0], [0.0, 1.1]]
    >>> model = ThreadedOneVsRest(LinearSVC(random_state=0), n_jobs=2).fit(X, [0, 0, 1, 1, 2, 2])
    >>> model.predict([[0.05, 0.0], [1.05, 0.0], [0.0, 1.05]]).tolist()
    [0, 1, 2]
    """

    def __init__(self, estimator: BaseEstimator, *, n_jobs: int | None = None) -> None:
        self.estimator = estimator
        self.n_jobs = n_jobs

    def fit(self, X, y, sample_weight=None) -> "ThreadedOneVsRest":
        """Fit one clone of `estimator` per group of classes, on threads."""
        X, y = validate_data(self, X, y, accept_sparse="csr")
        check_classification_targets(y)
        weights = None if sample_weight is None else check_sample_weight(sample_weight, len(y))
        self.classes_, codes = np.unique(y, return_inverse=True)
        groups = 1 if len(self.classes_) <= 2 else min(self.n_jobs or 1, len(self.classes_))
        members = np.array_split(np.arange(len(self.classes_)), groups)
        fitted = Parallel(n_jobs=groups, prefer="threads")(
            delayed(_fit_group)(self.estimator, X, codes, weights, group, groups > 1)
            for group in members
        )
        # Column-major, as liblinear's own: `X @ coef_.T` then reads it without a copy.
        self.coef_ = np.asfortranarray(np.vstack([coef for coef, _ in fitted]))
        self.intercept_ = np.concatenate([intercept for _, intercept in fitted])
        return self

    def decision_function(self, X) -> np.ndarray:
        """One margin per class, or the margin of `classes_[1]` for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        """The class of the largest margin."""
        scores = self.decision_function(X)
        best = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[best]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags.sparse = inner.input_tags.sparse
        tags.classifier_tags.poor_score = inner.classifier_tags.poor_score
        return tags


def _fit_group(
    estimator, X, codes: np.ndarray, weights, group: np.ndarray, split: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The weights and intercepts of `group`'s classes, from a clone of `estimator` fitted with
    every other class (if `split`) relabelled as one rest class."""
    labels = np.where(np.isin(codes, group), codes, _REST) if split else codes
    model = clone(estimator).fit(X, labels, sample_weight=weights)
    coef, intercept = model.coef_, np.atleast_1d(model.intercept_)
    if coef.shape[0] == 1:  # two labels, one problem: that of the group's class (or classes_[1])
        return coef, intercept
    own = model.classes_ != _REST
    return coef[own], intercept[own]
