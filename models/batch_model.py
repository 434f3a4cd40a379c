"""The batch layer's scikit-learn intent classifier, and the counting that lets it train on
millions of events at the cost of the distinct ones.

The model (`build_batch_model`) is TF-IDF word and `char_wb` n-grams feeding a linear SVM and
a multinomial naive Bayes, each turned into probabilities by a softmax temperature fitted on
out-of-fold scores, then averaged. The probabilities are blended with the speed layer's and
scored by log loss, so they are calibrated, not just ranked.

The master dataset repeats texts (replays, popular queries). `count_examples` streams Parquet
batches into distinct (text, intent) pairs with counts, and `DistinctRowsClassifier` fits on
those pairs with the counts as weights: exactly the model the repeated rows would give.

Any other scikit-learn classifier can be the batch model (`BATCH_MODEL`): `prepare_batch_model`
checks it, calibrates one that gives margins only, and wraps it in `DistinctRowsClassifier`.
pyarrow is imported only by the counting functions, so a fitted model loads without it.

The defaults were chosen on CLINC150's `val` split by `bench/batch_model_search.py`; the
candidates and their scores are in `bench/results/batch_model_search.md`, the reasons for the
other defaults in `bench/results/model_notes.md`.
"""

import logging
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.ensemble import VotingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import BaseCrossValidator, KFold, check_cv
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC
from sklearn.utils import get_tags
from sklearn.utils.metadata_routing import get_routing_for_object
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    has_fit_parameter,
    validate_data,
)

from models.contracts import check_batch_model, gives_probabilities

if TYPE_CHECKING:  # only the counting functions use pyarrow, and import it themselves
    import pyarrow as pa

__all__ = [
    "BATCH_TOKEN_PATTERN",
    "MAX_EXPANDED_ROWS",
    "ColumnMajorMultinomialNB",
    "DistinctRowsClassifier",
    "TemperatureCalibratedClassifier",
    "build_batch_model",
    "count_examples",
    "vocabulary_size",
    "count_examples_from_pairs",
    "fit_on_counts",
    "prepare_batch_model",
]

log = logging.getLogger(__name__)

BATCH_TOKEN_PATTERN = r"(?u)\b\w+\b"
"""The batch model's words, of any length: scikit-learn's default pattern drops one-letter words
such as "i" and "a", which carry intent in queries ("i want", "a taxi"). (The speed model has
its own, `models.speed_model.SPEED_TOKEN_PATTERN`.)"""

# Counts held per batch are merged once they outgrow twice the merged table plus this many rows.
_MERGE_SLACK = 100_000
# Bounds on log(temperature): wide enough for any score scale, finite when a fold is separable.
_LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)

MAX_EXPANDED_ROWS = 5_000_000
"""The most rows `DistinctRowsClassifier` expands distinct rows into, for an estimator that takes
no sample weights: each distinct row repeated by its count (divided by the counts' greatest
common divisor). Past it, the fit is refused rather than run out of memory."""


def build_batch_model(
    *,
    word_ngram_range: tuple[int, int] = (1, 2),
    char_ngram_range: tuple[int, int] | None = (2, 4),
    token_pattern: str = BATCH_TOKEN_PATTERN,
    min_df: int = 2,
    C: float = 1.0,
    nb_alpha: float = 0.01,
    nb_weight: float = 0.3,
    calibration_folds: int = 2,
    n_jobs: int | None = 2,
) -> "DistinctRowsClassifier":
    """The batch model, unfitted: texts in, calibrated intent probabilities out.

    Parameters
    ----------
    word_ngram_range, char_ngram_range
        TF-IDF (sublinear tf, l2-normalised per block) word n-grams and `char_wb` n-grams;
        `char_ngram_range=None` leaves the character block out.
    token_pattern
        How words are found; the default keeps one-letter words.
    min_df
        Minimum number of distinct training texts an n-gram must occur in: rarer ones only
        grow the model.
    C
        The linear SVM's inverse regularisation, per distinct example of average weight.
    nb_alpha, nb_weight
        Naive Bayes smoothing, and its share of the averaged probabilities (the SVM has
        `1 - nb_weight`; 0 drops naive Bayes).
    calibration_folds
        Folds for the out-of-fold scores the temperatures are fitted on.
    n_jobs
        Threads for the SVM's fold fits (liblinear releases the GIL).

    Returns
    -------
    DistinctRowsClassifier
        A `Pipeline` of the features and the classifier, fitted on distinct rows.

    Examples
    --------
    >>> model = build_batch_model(min_df=1, calibration_folds=2)
    >>> texts = ["book a flight", "flight to paris", "play a song", "play some music"]
    >>> model = model.fit(texts, ["travel", "travel", "music", "music"])
    >>> model.predict(["a flight to rome"]).tolist()
    ['travel']
    """
    tfidf = {"sublinear_tf": True, "min_df": min_df}
    # Ranges may come as JSON lists (BATCH_MODEL_PARAMS); scikit-learn takes tuples only.
    words = TfidfVectorizer(
        ngram_range=tuple(word_ngram_range), token_pattern=token_pattern, **tfidf
    )
    blocks = [("words", words)]
    if char_ngram_range is not None:
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(char_ngram_range), **tfidf)
        blocks.append(("chars", chars))

    svm = TemperatureCalibratedClassifier(
        LinearSVC(C=C, random_state=0), cv=calibration_folds, n_jobs=n_jobs
    )
    classifier: BaseEstimator = svm
    if nb_weight > 0:
        naive_bayes = TemperatureCalibratedClassifier(
            ColumnMajorMultinomialNB(alpha=nb_alpha), cv=calibration_folds
        )
        classifier = VotingClassifier(
            [("svm", svm), ("nb", naive_bayes)], voting="soft", weights=[1 - nb_weight, nb_weight]
        )
    return DistinctRowsClassifier(
        Pipeline([("features", FeatureUnion(blocks)), ("classifier", classifier)])
    )


def prepare_batch_model(
    estimator: Any, where: str = "the batch model"
) -> tuple["DistinctRowsClassifier", list[str]]:
    """`estimator` made ready for the batch layer, and notes on what was done to it.

    The estimator must keep the batch contract (`models.contracts.check_batch_model`). One
    that gives margins only (`decision_function`, no `predict_proba`, like `LinearSVC`) is
    wrapped in `TemperatureCalibratedClassifier`, since the blend and the gate need
    probabilities (a `Pipeline`'s final step is wrapped, so the calibration sees the features
    as the default model's does); anything not already a `DistinctRowsClassifier` is wrapped
    in one, so that repeated events cost what distinct ones cost. `build_batch_model()` passes
    unchanged.

    Parameters
    ----------
    estimator
        An unfitted scikit-learn classifier (a `DistinctRowsClassifier` is checked inside).
    where
        What the estimator is, for the error message.

    Returns
    -------
    model : DistinctRowsClassifier
        The model to fit with `fit_on_counts`.
    notes : list of str
        One line per wrapping done, also logged; empty when nothing was needed.

    Raises
    ------
    models.contracts.ModelContractError
        When the estimator lacks what the pipeline needs; the message names what.

    Examples
    --------
    >>> from sklearn.svm import LinearSVC
    >>> model, notes = prepare_batch_model(LinearSVC())
    >>> model.estimator
    TemperatureCalibratedClassifier(estimator=LinearSVC())
    >>> print(notes[0])
    LinearSVC gives margins only: wrapped in temperature calibration
    """
    distinct = isinstance(estimator, DistinctRowsClassifier)
    inner = estimator.estimator if distinct else estimator
    check_batch_model(inner, where)
    notes = []
    if not gives_probabilities(inner):
        notes.append(f"{_final_name(inner)} gives margins only: wrapped in temperature calibration")
        inner = _calibrated(inner)
    if distinct and inner is estimator.estimator:
        model = estimator
    else:
        if not distinct:
            notes.append(
                f"{type(estimator).__name__} fitted on distinct rows weighted by their counts: "
                "wrapped in DistinctRowsClassifier"
            )
        model = DistinctRowsClassifier(inner)
    for note in notes:
        log.info("%s: %s", where, note)
    return model, notes


def _calibrated(estimator: Any) -> Any:
    """`estimator` with temperature calibration: around it, or around a pipeline's final step
    (a new pipeline; `estimator` is left as it was)."""
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        return clone(estimator).set_params(**{name: _calibrated(last)})
    return TemperatureCalibratedClassifier(estimator)


def _final_name(estimator: Any) -> str:
    """The class name of `estimator`, or of a pipeline's final step."""
    return type(_final_step(estimator)).__name__


def fit_on_counts(
    model: "DistinctRowsClassifier",
    texts: list[str],
    intents: list[str],
    weights: np.ndarray,
) -> "DistinctRowsClassifier":
    """Fit `model` on distinct examples and how often each occurred.

    Equivalent to fitting on every example repeated `weights` times (see
    `DistinctRowsClassifier`), at the cost of the distinct ones.

    Parameters
    ----------
    model
        An unfitted model, such as `build_batch_model()`.
    texts, intents, weights
        Distinct examples and their counts, as `count_examples` returns them.

    Returns
    -------
    DistinctRowsClassifier
        `model`, fitted.
    """
    return model.fit(texts, intents, sample_weight=weights)


def vocabulary_size(model: BaseEstimator) -> int:
    """The number of n-grams the fitted text vectorisers of `model` kept (0 if it has none).

    >>> texts, labels = ["book a flight", "play a song"], ["travel", "music"]  # 5 words, 4 pairs
    >>> vocabulary_size(build_batch_model(min_df=1, char_ngram_range=None).fit(texts, labels))
    9
    """
    found = [
        len(part.vocabulary_)
        for part in _walk(model)
        if isinstance(part, TfidfVectorizer) and hasattr(part, "vocabulary_")
    ]
    return sum(found)


def _walk(estimator) -> Iterable:
    """`estimator` and every fitted estimator nested in it (pipelines, unions, meta-estimators)."""
    yield estimator
    children: list = []
    if hasattr(estimator, "estimator_"):
        children.append(estimator.estimator_)
    if isinstance(estimator, Pipeline):
        children += [step for _, step in estimator.steps]
    if isinstance(estimator, FeatureUnion):
        children += [part for _, part in estimator.transformer_list]
    for child in children:
        yield from _walk(child)


def count_examples(
    batches: "Iterable[pa.RecordBatch | pa.Table]",
) -> tuple[list[str], list[str], np.ndarray]:
    """Distinct (text, intent) pairs of `batches` (columns `text`, `intent`) and their counts.

    Each batch is grouped in Arrow; the partial counts are merged whenever they outgrow the
    merged ones, so memory follows the number of distinct pairs, not of rows. Unlabelled rows
    (null intent) are skipped. The pairs come sorted, so the result does not depend on the
    order of the batches.

    Parameters
    ----------
    batches
        Arrow batches or tables with string columns `text` and `intent`.

    Returns
    -------
    texts, intents : list of str
        The distinct labelled pairs, sorted by text then intent.
    weights : numpy.ndarray
        How many times each pair occurred, as floats (`fit_on_counts`'s weights).

    Examples
    --------
    >>> import pyarrow as pa
    >>> batch = pa.RecordBatch.from_pydict(
    ...     {"text": ["hi", "hi", "bye", "hi"], "intent": ["greet", "greet", "bye", None]}
    ... )
    >>> texts, intents, weights = count_examples([batch])
    >>> texts, intents, weights.tolist()
    (['bye', 'hi'], ['bye', 'greet'], [1.0, 2.0])
    """
    parts: list[pa.Table] = []
    held = merged = 0
    for batch in batches:
        parts.append(_count_batch(batch))
        held += parts[-1].num_rows
        if held > 2 * merged + _MERGE_SLACK:
            parts = [_merge_counts(parts)]
            held = merged = parts[0].num_rows
    if not parts:
        return [], [], np.zeros(0)
    counts = _merge_counts(parts).sort_by([("text", "ascending"), ("intent", "ascending")])
    weights = counts["count"].to_numpy().astype(np.float64)
    return counts["text"].to_pylist(), counts["intent"].to_pylist(), weights


def _count_batch(batch: "pa.RecordBatch | pa.Table") -> "pa.Table":
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table(batch.select(["text", "intent"]))
    labelled = pc.and_(pc.is_valid(table["text"]), pc.is_valid(table["intent"]))
    grouped = table.filter(labelled).group_by(["text", "intent"]).aggregate([([], "count_all")])
    return grouped.rename_columns(["text", "intent", "count"])


def _merge_counts(parts: "list[pa.Table]") -> "pa.Table":
    import pyarrow as pa

    grouped = pa.concat_tables(parts).group_by(["text", "intent"]).aggregate([("count", "sum")])
    return grouped.rename_columns(["text", "intent", "count"])


def count_examples_from_pairs(
    pairs: Iterable[tuple[str, str]],
) -> tuple[list[str], list[str], np.ndarray]:
    """`count_examples` for (text, intent) pairs already in memory.

    >>> count_examples_from_pairs([("hi", "greet"), ("bye", "bye"), ("hi", "greet")])
    (['bye', 'hi'], ['bye', 'greet'], array([1., 2.]))
    """
    counts = sorted(Counter(pairs).items())
    texts = [text for (text, _), _ in counts]
    intents = [intent for (_, intent), _ in counts]
    return texts, intents, np.array([count for _, count in counts], dtype=np.float64)


class ColumnMajorMultinomialNB(MultinomialNB):
    """`MultinomialNB` with its log probabilities stored column-major after `fit`.

    Scoring computes `X @ feature_log_prob_.T`; with the default row-major layout scipy copies
    the whole (classes x features) matrix on every call, which dominates the cost of scoring one
    text. Parameters, values and the rest of the API are `MultinomialNB`'s.

    Attributes
    ----------
    feature_log_prob_ : numpy.ndarray
        As `MultinomialNB`'s, of shape (n_classes, n_features), in Fortran order.
    """

    feature_log_prob_: np.ndarray

    def fit(self, X, y, sample_weight=None) -> "ColumnMajorMultinomialNB":
        super().fit(X, y, sample_weight=sample_weight)
        self.feature_log_prob_ = np.asfortranarray(self.feature_log_prob_)
        return self


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
    Collapsing millions of texts here works but holds them all in memory: `count_examples`
    counts them batch by batch.

    The weights reach `estimator` by scikit-learn's own means, whatever it is made of:

    - its `fit` takes `sample_weight`: they are passed;
    - else (a `Pipeline`, a meta-estimator) if they can reach its final step: under metadata
      routing, every part of it whose `fit` takes `sample_weight` requests them, and the
      routers deliver them;
    - else the distinct rows are repeated by their counts (divided by the counts' greatest
      common divisor, so replays still change nothing), if the weights are whole numbers and
      the rows come to at most `MAX_EXPANDED_ROWS`; otherwise `fit` raises ValueError, since
      dropping the weights would silently train another model.

    Parameters
    ----------
    estimator
        A classifier; best one whose `fit` (or its final step's) takes `sample_weight`.

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

    def __init__(self, estimator: BaseEstimator) -> None:
        self.estimator = estimator

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
        rows, labels, totals = _collapse(X, y, _check_weights(sample_weight, len(y)))
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
        routing = get_routing_for_object(_final_step(estimator))
        if routing.consumes("fit", ["sample_weight"]):
            estimator.fit(rows, labels, sample_weight=weights)
            return
        for part in consumers:  # weights that would not reach the classifier are not given
            part.set_fit_request(sample_weight=None)
    repeats = _whole_counts(totals, estimator)
    estimator.fit(np.repeat(rows, repeats, axis=0), np.repeat(labels, repeats))


def _final_step(estimator):
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
    if _final_step(estimator) is not estimator:
        name = f"{name} (ending in {_final_name(estimator)})"
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


def _check_weights(sample_weight, n_samples: int) -> np.ndarray:
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


class TemperatureCalibratedClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """`estimator` fitted on all rows; probabilities are softmax(scores / T), with the single
    temperature T fitted by weighted log loss on out-of-fold scores.

    Scores are `decision_function` (a linear SVM's margins) or else `predict_log_proba` (naive
    Bayes, whose own probabilities are far too sure). One parameter barely overfits and never
    changes the predicted class. `cv` is a number of shuffled folds, or any scikit-learn
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
        Number of shuffled folds, a scikit-learn splitter or a list of (train, test) splits.
    n_jobs
        Threads for the fits (the fit on all rows and one per fold run together).
    random_state
        Seed of the shuffled folds.

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
        cv: int | BaseCrossValidator | Iterable = 3,
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
        weights = None if sample_weight is None else _check_weights(sample_weight, len(y))
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
    """(train, test) index pairs: `cv` shuffled K-folds (fewer if there are fewer rows), or
    any scikit-learn splitter or list of splits."""
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
