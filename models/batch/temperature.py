"""A meta-estimator that turns any classifier's scores into probabilities with one softmax
temperature fitted on held-out scores, and the held-out slice it fits it on by default."""

import numbers
from collections.abc import Iterable, Iterator

import numpy as np
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.model_selection import BaseCrossValidator, KFold, check_cv
from sklearn.utils import get_tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from models.batch.distinct_rows import check_sample_weight

__all__ = ["HeldOutSlice", "TemperatureCalibratedClassifier"]

# Bounds on log(temperature): wide enough for any score scale, finite when a fold is separable.
_LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)


class HeldOutSlice:
    """One shuffled split whose two sides are bounded: a held-out slice of `test_size` of the
    rows (at most `max_test`) and, to train on, at most `max_train` of the others.

    One parameter is all a temperature fits, and a few thousand held-out scores pin it down, so
    past these bounds more rows would only cost time: the calibration's cost stays flat while
    the model's own fit grows with the rows.

    Parameters
    ----------
    test_size
        Share of the rows held out, before `max_test` (at least one row).
    max_test, max_train
        The most rows held out and trained on.
    random_state
        Seed of the shuffle.

    Examples
    --------
    >>> [(len(train), len(test)) for train, test in HeldOutSlice(max_train=50).split(range(100))]
    [(50, 20)]
    """

    def __init__(
        self,
        test_size: float = 0.2,
        *,
        max_test: int = 10_000,
        max_train: int = 50_000,
        random_state: int | None = 0,
    ) -> None:
        self.test_size = test_size
        self.max_test = max_test
        self.max_train = max_train
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """One split."""
        return 1

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The (train, test) row indices of the one split, each ascending."""
        n = X.shape[0] if hasattr(X, "shape") else len(X)
        order = np.random.default_rng(self.random_state).permutation(n)
        held = min(self.max_test, max(1, int(self.test_size * n)))
        yield np.sort(order[held : held + self.max_train]), np.sort(order[:held])

    def __repr__(self) -> str:
        return (
            f"HeldOutSlice({self.test_size}, max_test={self.max_test}, "
            f"max_train={self.max_train}, random_state={self.random_state})"
        )


class TemperatureCalibratedClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """`estimator` fitted on all rows; probabilities are softmax(scores / T), with the single
    temperature T fitted by weighted log loss on held-out scores.

    Scores are `decision_function` (a linear SVM's margins) or else `predict_log_proba` (naive
    Bayes, whose own probabilities are far too sure). One parameter barely overfits and never
    changes the predicted class. By default T is fitted on one `HeldOutSlice`, whose cost does
    not grow with the rows; `cv` may instead be a number of shuffled folds, or any scikit-learn
    splitter or list of (train, test) splits.

    Unlike `CalibratedClassifierCV(method="temperature")`, a class with fewer rows than folds
    is fine (a new intent starts with one example): rows whose class a fold's model never saw
    are left out of the fit of T.

    Folds split rows, so a repeated row can land on both sides of a fold: wrap this in
    `DistinctRowsClassifier` when rows repeat.

    Parameters
    ----------
    estimator
        A classifier with `decision_function` or `predict_log_proba`.
    cv
        None for one `HeldOutSlice`; a number of shuffled folds, a scikit-learn splitter or a
        list of (train, test) splits.
    n_jobs
        Threads for the fits (the fit on all rows and one per fold run together).
    random_state
        Seed of the shuffled folds or slice.

    Attributes
    ----------
    estimator_
        The clone of `estimator` fitted on all rows: it gives the scores.
    classes_
        The labels, sorted.
    temperature_
        The fitted T (1 when there were too few rows to hold any out).
    n_features_in_
        Number of features seen in `fit`.

    Examples
    --------
    >>> from sklearn.svm import LinearSVC
    >>> X = [[0.0], [0.2], [0.4], [1.0], [1.2], [1.4]]
    >>> model = TemperatureCalibratedClassifier(LinearSVC(), cv=3).fit(X, [0, 0, 0, 1, 1, 1])
    >>> model.predict([[0.1], [1.3]]).tolist()
    [0, 1]
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        *,
        cv: int | BaseCrossValidator | HeldOutSlice | Iterable | None = None,
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.estimator = estimator
        self.cv = cv
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "TemperatureCalibratedClassifier":
        """Fit `estimator` on all rows and on each fold's training rows, then T."""
        X, y = validate_data(self, X, y, accept_sparse="csr")
        check_classification_targets(y)
        weights = None if sample_weight is None else check_sample_weight(sample_weight, len(y))
        self.classes_ = np.unique(y)
        folds = _folds(self.cv, self.random_state, X, y)
        # The fit on all rows goes first, so that it overlaps the fold fits.
        subsets = [np.arange(len(y))] + [train for train, _ in folds]
        models = Parallel(n_jobs=self.n_jobs, prefer="threads")(
            delayed(_fit_subset)(self.estimator, X, y, weights, rows) for rows in subsets
        )
        self.estimator_ = models[0]
        fold_models = zip(models[1:], (test for _, test in folds), strict=True)
        held_out = [(model, test) for model, test in fold_models if model is not None]
        self.temperature_ = _fit_temperature(held_out, X, y, weights, self.classes_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """softmax(scores / `temperature_`), one column per class of `classes_`."""
        check_is_fitted(self)  # `estimator_` validates X: once is enough on the serving path
        return softmax(_scores(self.estimator_, X, self.classes_) / self.temperature_, axis=1)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        probabilities = self.predict_proba(X)  # before `classes_`: unfitted raises NotFittedError
        return self.classes_[np.argmax(probabilities, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags.sparse = inner.input_tags.sparse
        tags.input_tags.positive_only = inner.input_tags.positive_only
        tags.classifier_tags.poor_score = inner.classifier_tags.poor_score
        return tags


def _folds(cv, random_state, X, y) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: one `HeldOutSlice` for None, `cv` shuffled K-folds (fewer if
    there are fewer rows), or any scikit-learn splitter or list of splits."""
    if cv is None:
        return list(HeldOutSlice(random_state=random_state).split(y))
    if isinstance(cv, numbers.Integral):
        n_splits = min(int(cv), len(y))
        if n_splits < 2:
            return []
        cv = KFold(n_splits, shuffle=True, random_state=random_state)
    return list(check_cv(cv).split(X, y))


def _fit_subset(estimator, X, y, weights, rows) -> BaseEstimator | None:
    """A clone of `estimator` fitted on `rows`; None for a fold with a single class."""
    if len(rows) < len(y) and np.unique(y[rows]).size < 2:
        return None
    params = {} if weights is None else {"sample_weight": weights[rows]}
    return clone(estimator).fit(X[rows], y[rows], **params)


def _scores(model, X, classes: np.ndarray) -> np.ndarray:
    """`model`'s scores as one column per class in `classes`; -inf for classes it never saw."""
    if hasattr(model, "decision_function"):
        raw = model.decision_function(X)
        if raw.ndim == 1:  # binary: the margin of classes_[1] over classes_[0]
            raw = np.column_stack([np.zeros_like(raw), raw])
    else:
        raw = model.predict_log_proba(X)
    scores = np.full((len(raw), len(classes)), -np.inf)
    scores[:, np.searchsorted(classes, model.classes_)] = raw
    return scores


def _fit_temperature(held_out, X, y, weights, classes: np.ndarray) -> float:
    """The T minimising the weighted log loss of softmax(scores / T) on the held-out rows of
    each fold, leaving out rows whose class their fold's model never saw; 1 if none are left."""
    if not held_out:
        return 1.0
    rows = np.concatenate([test for _, test in held_out])
    scores = np.vstack([_scores(model, X[test], classes) for model, test in held_out])
    true_scores = scores[np.arange(len(rows)), np.searchsorted(classes, y[rows])]
    row_weights = np.ones(len(rows)) if weights is None else weights[rows]
    kept = np.isfinite(true_scores) & (row_weights > 0)
    if not kept.any():
        return 1.0
    scores, true_scores, row_weights = scores[kept], true_scores[kept], row_weights[kept]

    def loss(log_temperature: float) -> float:
        inverse = np.exp(-log_temperature)
        return float(row_weights @ (logsumexp(scores * inverse, axis=1) - true_scores * inverse))

    best = minimize_scalar(loss, bounds=_LOG_TEMPERATURE_BOUNDS, method="bounded")
    return float(np.exp(best.x))
