"""The batch model's recipe, and how any configured classifier is made ready to be one.

The features and classifiers were chosen on CLINC150's `val` split by
`bench/batch_model_search.py`; the candidates and their scores are in
`bench/results/batch_model_search.md`, the reasons for the other defaults in
`bench/results/model_notes.md`. How the fit grows with the history, and the accuracy it keeps,
is measured by `lambda-ml bench retrain` (`bench/results/retrain.json`).
"""

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import VotingClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from models.batch.distinct_rows import DistinctRowsClassifier, final_step
from models.batch.features import HashedTfidfVectorizer
from models.batch.naive_bayes import ColumnMajorMultinomialNB
from models.batch.one_vs_rest import ThreadedOneVsRest
from models.batch.temperature import TemperatureCalibratedClassifier
from models.contracts import check_batch_model, gives_probabilities

__all__ = [
    "BATCH_TOKEN_PATTERN",
    "build_batch_model",
    "fit_on_counts",
    "prepare_batch_model",
    "vocabulary_size",
]

log = logging.getLogger(__name__)

BATCH_TOKEN_PATTERN = r"(?u)\b\w+\b"
"""The batch model's words, of any length: scikit-learn's default pattern drops one-letter words
such as "i" and "a", which carry intent in queries ("i want", "a taxi"). (The speed model has
its own, `models.speed_model.SPEED_TOKEN_PATTERN`.)"""


def build_batch_model(
    *,
    word_ngram_range: tuple[int, int] = (1, 2),
    char_ngram_range: tuple[int, int] | None = (2, 4),
    token_pattern: str = BATCH_TOKEN_PATTERN,
    min_df: int = 2,
    C: float = 1.0,
    max_passes: int = 10,
    nb_alpha: float = 0.01,
    nb_weight: float = 0.3,
    calibration_folds: int | None = None,
    count_weighting: str = "log",
    n_jobs: int | None = 2,
) -> DistinctRowsClassifier:
    """The batch model, unfitted: texts in, calibrated intent probabilities out.

    Its fit grows linearly with the distinct texts: the n-grams are hashed and counted on
    `n_jobs` processes, the linear SVM's one-vs-rest problems run in `n_jobs` groups on
    threads and stop after `max_passes` passes over the rows, and the temperatures are fitted
    on one held-out slice of bounded size.

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
    max_passes
        The most passes liblinear's dual coordinate descent makes over the rows per class (it
        stops earlier at tolerance 0.1): each pass costs the rows' n-grams once, so the bound
        is what keeps the fit linear when weighted rows would need many more.
    nb_alpha, nb_weight
        Naive Bayes smoothing, and its share of the averaged probabilities (the SVM has
        `1 - nb_weight`; 0 drops naive Bayes).
    calibration_folds
        None to fit the temperatures on one bounded held-out slice (`HeldOutSlice`), or a
        number of shuffled folds.
    count_weighting
        How much a repeated text counts (`DistinctRowsClassifier`): "log" by default,
        "count" for its raw count.
    n_jobs
        Processes counting n-grams, and threads fitting the SVM's groups of classes.

    Returns
    -------
    DistinctRowsClassifier
        A `Pipeline` of the features and the classifier, fitted on distinct rows.

    Examples
    --------
    >>> model = build_batch_model(min_df=1)
    >>> texts = ["book a flight", "flight to paris", "play a song", "play some music"]
    >>> model = model.fit(texts, ["travel", "travel", "music", "music"])
    >>> model.predict(["a flight to rome"]).tolist()
    ['travel']
    """
    # Ranges may come as JSON lists (BATCH_MODEL_PARAMS); scikit-learn takes tuples only.
    words = HashedTfidfVectorizer(
        ngram_range=tuple(word_ngram_range),
        token_pattern=token_pattern,
        min_df=min_df,
        n_jobs=n_jobs,
    )
    blocks = [("words", words)]
    if char_ngram_range is not None:
        chars = HashedTfidfVectorizer(
            analyzer="char_wb", ngram_range=tuple(char_ngram_range), min_df=min_df, n_jobs=n_jobs
        )
        blocks.append(("chars", chars))

    linear = LinearSVC(C=C, dual=True, tol=0.1, max_iter=max_passes, random_state=0)
    svm = TemperatureCalibratedClassifier(
        ThreadedOneVsRest(linear, n_jobs=n_jobs), cv=calibration_folds
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
        Pipeline([("features", FeatureUnion(blocks)), ("classifier", classifier)]),
        count_weighting=count_weighting,
    )


def prepare_batch_model(
    estimator: Any, where: str = "the batch model"
) -> tuple[DistinctRowsClassifier, list[str]]:
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
    if not distinct:
        notes.append(
            f"{type(estimator).__name__} fitted on distinct rows weighted by their counts: "
            "wrapped in DistinctRowsClassifier"
        )
        model = DistinctRowsClassifier(inner)
    elif inner is estimator.estimator:
        model = estimator
    else:  # its own settings (how much a repeat counts) kept around the calibrated model
        model = clone(estimator).set_params(estimator=inner)
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
    return type(final_step(estimator)).__name__


def fit_on_counts(
    model: DistinctRowsClassifier,
    texts: list[str],
    intents: list[str],
    weights: np.ndarray,
) -> DistinctRowsClassifier:
    """Fit `model` on distinct examples and how often each occurred.

    Equivalent to fitting on every example repeated `weights` times (see
    `DistinctRowsClassifier`), at the cost of the distinct ones.

    Parameters
    ----------
    model
        An unfitted model, such as `build_batch_model()`.
    texts, intents, weights
        Distinct examples and their counts, as `pipelines.batch.counts.count_examples`
        returns them.

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
        len(part.vocabulary_) if hasattr(part, "vocabulary_") else len(part.columns_)
        for part in _walk(model)
        if hasattr(part, "vocabulary_") or isinstance(part, HashedTfidfVectorizer)
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
