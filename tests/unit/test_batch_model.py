"""The batch model: accuracy and probabilities on a CLINC150 sample, counts standing in for
repeated events, sample weights reaching any estimator, models made ready by configuration, and
scikit-learn's estimator checks for the estimators it is built from."""

import doctest
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.svm import LinearSVC
from sklearn.utils import murmurhash3_32
from sklearn.utils.estimator_checks import estimator_checks_generator

import models.batch.distinct_rows
import models.batch.features
import models.batch.one_vs_rest
import models.batch.recipe
import models.batch.temperature
import pipelines.batch.counts
from models.alternatives import linear_svc, tfidf_logistic
from models.batch.distinct_rows import DistinctRowsClassifier
from models.batch.features import HashedTfidfVectorizer
from models.batch.naive_bayes import ColumnMajorMultinomialNB
from models.batch.one_vs_rest import ThreadedOneVsRest
from models.batch.recipe import (
    BATCH_TOKEN_PATTERN,
    build_batch_model,
    fit_on_counts,
    prepare_batch_model,
)
from models.batch.temperature import TemperatureCalibratedClassifier
from models.contracts import ModelContractError
from pipelines.batch.counts import count_examples, count_examples_from_pairs
from streams.dataset import CLINC150_DATA, load_dataset

INTENTS = 20  # the first intents in sorted order, to keep fits around a second


@pytest.fixture(scope="module")
def clinc():
    """Train and held-out (val) examples of a few CLINC150 intents."""
    examples = load_dataset(CLINC150_DATA).examples
    chosen = sorted({e.intent for e in examples if e.intent != "oos"})[:INTENTS]
    split = {
        name: [(e.text, e.intent) for e in examples if e.split == name and e.intent in chosen]
        for name in ("train", "val")
    }
    return split["train"], split["val"]


@pytest.fixture(scope="module")
def fitted(clinc):
    train, _ = clinc
    texts, intents = zip(*train, strict=True)
    return build_batch_model().fit(list(texts), list(intents))


def _batches(pairs: list[tuple[str | None, str | None]], size: int) -> list[pa.RecordBatch]:
    return [
        pa.RecordBatch.from_pydict(
            {
                "text": [t for t, _ in pairs[i : i + size]],
                "intent": [c for _, c in pairs[i : i + size]],
            }
        )
        for i in range(0, len(pairs), size)
    ]


def test_held_out_accuracy_and_calibration(fitted, clinc):
    """0.98 here (word n-grams alone: 0.97); broken features or weights fall well below."""
    _, held_out = clinc
    texts, intents = zip(*held_out, strict=True)
    probabilities = fitted.predict_proba(list(texts))
    predicted = fitted.classes_[probabilities.argmax(axis=1)]
    accuracy = float(np.mean(predicted == np.array(intents)))
    assert accuracy >= 0.95
    assert abs(probabilities.max(axis=1).mean() - accuracy) < 0.05  # calibrated
    assert list(fitted.predict(list(texts[:5]))) == list(predicted[:5])


def test_probabilities_are_a_distribution_over_the_labels(fitted, clinc):
    train, held_out = clinc
    probabilities = fitted.predict_proba([text for text, _ in held_out[:50]])
    assert list(fitted.classes_) == sorted({intent for _, intent in train})
    assert probabilities.shape == (50, INTENTS)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert fitted.predict_proba(["book me a flight"]).shape == (1, INTENTS)


def test_counted_examples_train_the_same_model_as_repeated_events(clinc):
    """Repeats, conflicting labels and a shuffled order: the counts path gives the same model."""
    train, held_out = clinc
    rng = random.Random(0)
    distinct = rng.sample(train, 300) + [("what is on my to do list", train[0][1])]
    events = [pair for pair in distinct for _ in range(rng.randint(1, 4))]
    events += [("what is on my to do list", train[-1][1])]
    rng.shuffle(events)
    probe = [text for text, _ in held_out[::10]] + ["what is on my to do list"]

    texts, intents = zip(*events, strict=True)
    repeated = build_batch_model(n_jobs=1).fit(list(texts), list(intents))
    counted = fit_on_counts(build_batch_model(n_jobs=1), *count_examples(_batches(events, 97)))
    np.testing.assert_allclose(counted.predict_proba(probe), repeated.predict_proba(probe))

    once = build_batch_model(n_jobs=1).fit(*map(list, zip(*set(events), strict=True)))
    assert not np.allclose(once.predict_proba(probe), repeated.predict_proba(probe), atol=1e-3)


def test_counts_decide_between_conflicting_labels(clinc):
    train, _ = clinc
    text, first, second = "what is on my to do list", train[0][1], train[-1][1]
    texts, intents = map(list, zip(*train, strict=True))

    def p_first(count_first: int, count_second: int) -> float:
        weights = np.ones(len(texts) + 2)
        weights[-2:] = count_first, count_second
        model = fit_on_counts(
            build_batch_model(n_jobs=1), texts + [text, text], intents + [first, second], weights
        )
        probabilities = dict(zip(model.classes_, model.predict_proba([text])[0], strict=True))
        return probabilities[first] - probabilities[second]

    assert p_first(20, 1) > 0 > p_first(1, 20)


def test_replaying_the_whole_history_changes_nothing(clinc):
    """Weights are per distinct example: k replays of everything give the same model."""
    train, held_out = clinc
    texts, intents = map(list, zip(*train[:400], strict=True))
    probe = [text for text, _ in held_out[:40]]
    once = fit_on_counts(build_batch_model(n_jobs=1), texts, intents, np.ones(len(texts)))
    replayed = fit_on_counts(build_batch_model(n_jobs=1), texts, intents, np.full(len(texts), 55.0))
    np.testing.assert_allclose(replayed.predict_proba(probe), once.predict_proba(probe))


def test_a_new_intent_with_one_example_is_learned(clinc):
    """Fewer examples than calibration folds must not stop a retrain."""
    train, _ = clinc
    texts, intents = map(list, zip(*train, strict=True))
    model = build_batch_model(min_df=1).fit(texts + ["set my lamp to purple"], intents + ["lamp"])
    assert "lamp" in model.classes_
    assert model.predict(["set my lamp to purple"])[0] == "lamp"


def test_count_examples_merges_batches_and_skips_unlabelled(monkeypatch):
    rng = random.Random(1)
    pairs = [(f"text {rng.randint(0, 40)}", f"intent {rng.randint(0, 3)}") for _ in range(1000)]
    rows = pairs + [("no label", None), (None, "no text")]
    rng.shuffle(rows)
    expected = sorted(Counter(pairs).items())

    monkeypatch.setattr(pipelines.batch.counts, "_MERGE_SLACK", 10)  # merge every few batches
    for size in (1000, 33):
        texts, intents, weights = count_examples(_batches(rows, size))
        assert list(zip(zip(texts, intents, strict=True), weights.tolist(), strict=True)) == [
            (pair, float(count)) for pair, count in expected
        ]
    assert count_examples_from_pairs(pairs)[:2] == (texts, intents)
    np.testing.assert_array_equal(count_examples_from_pairs(pairs)[2], weights)
    texts, intents, weights = count_examples([])
    assert texts == intents == [] and weights.shape == (0,)


def test_the_default_model_weighs_a_repeat_by_its_log_count(clinc):
    """The default model is the pipeline fitted with weights 1 + log(count / smallest count),
    delivered by metadata routing to its classifier, rescaled to average 1."""
    train, held_out = clinc
    texts, intents = map(list, zip(*sorted(set(train)), strict=True))  # distinct, sorted
    counts = np.random.default_rng(0).integers(2, 60, len(texts)).astype(float)
    damped = 1 + np.log(counts / counts.min())
    probe = [text for text, _ in held_out[::5]] + texts[:50]
    # One thread: liblinear's fits in threads side by side differ in the last digits.
    reference = clone(build_batch_model(n_jobs=1).estimator).fit(
        texts, intents, classifier__sample_weight=damped / damped.mean()
    )
    model = fit_on_counts(build_batch_model(n_jobs=1), texts, intents, counts)
    np.testing.assert_allclose(model.predict_proba(probe), reference.predict_proba(probe))
    raw = build_batch_model(n_jobs=1, count_weighting="count")
    raw = fit_on_counts(raw, texts, intents, counts)
    assert not np.allclose(raw.predict_proba(probe), reference.predict_proba(probe), atol=1e-3)


def test_count_weighting_is_checked():
    with pytest.raises(ValueError, match=r"count_weighting must be one of \('count', 'log'\)"):
        DistinctRowsClassifier(LogisticRegression(), count_weighting="sqrt").fit(
            [[0.0], [1.0]], [0, 1]
        )


def test_hashed_tfidf_is_tfidf_with_its_columns_reordered(clinc, monkeypatch):
    """On texts whose n-grams hash without collisions (checked), the same matrix as
    scikit-learn's TfidfVectorizer, and the same whether counted on one process or two. (A new
    text's unseen n-gram may land in a kept column: hashing's price, not compared here.)"""
    train, _ = clinc
    texts = [text for text, _ in train][::4]
    for min_df in (1, 2):
        params = {"ngram_range": (1, 2), "token_pattern": BATCH_TOKEN_PATTERN, "min_df": min_df}
        reference = TfidfVectorizer(sublinear_tf=True, **params).fit(texts)
        terms = sorted(reference.vocabulary_, key=reference.vocabulary_.get)
        hashed = np.array([abs(murmurhash3_32(term, seed=0)) % 2**22 for term in terms])
        assert len(set(hashed.tolist())) == len(terms)  # no collisions among these n-grams
        vectorizer = HashedTfidfVectorizer(**params).fit(texts)
        assert np.array_equal(vectorizer.columns_, np.sort(hashed))
        order = np.searchsorted(vectorizer.columns_, hashed)
        expected = reference.transform(texts).toarray()
        np.testing.assert_allclose(vectorizer.transform(texts).toarray()[:, order], expected)

    monkeypatch.setattr(models.batch.features, "PARALLEL_MIN_TEXTS", 10)
    chars = {"analyzer": "char_wb", "ngram_range": (2, 4), "min_df": 2}
    one = HashedTfidfVectorizer(**chars).fit_transform(texts)
    two = HashedTfidfVectorizer(**chars, n_jobs=2).fit_transform(texts)
    assert (one != two).nnz == 0


def test_threaded_one_vs_rest_is_the_one_vs_rest_fit_on_every_class(clinc):
    """Groups of classes fitted apart give each class the problem it has in one fit: converged,
    the same margins (classes split unevenly, weights included)."""
    train, held_out = clinc
    texts, intents = map(list, zip(*train, strict=True))
    features = TfidfVectorizer(sublinear_tf=True).fit(texts)
    X, probe = features.transform(texts), features.transform([t for t, _ in held_out])
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(texts))
    svm = LinearSVC(tol=1e-8, max_iter=100_000, random_state=0)
    whole = clone(svm).fit(X, intents, sample_weight=weights)
    grouped = ThreadedOneVsRest(svm, n_jobs=3).fit(X, intents, sample_weight=weights)
    assert list(grouped.classes_) == list(whole.classes_)
    np.testing.assert_allclose(
        grouped.decision_function(probe), whole.decision_function(probe), atol=1e-4
    )
    two = [intent == intents[0] for intent in intents]
    binary = ThreadedOneVsRest(svm, n_jobs=3).fit(X, two)
    np.testing.assert_allclose(
        binary.decision_function(probe), clone(svm).fit(X, two).decision_function(probe), atol=1e-4
    )


def _tripled(pairs: list[tuple[str, str]], every: int = 3):
    """(texts, intents) with every `every`th pair three times, and the same as distinct pairs
    with weight 3."""
    repeated = [pair for i, pair in enumerate(pairs) for _ in range(3 if i % every == 0 else 1)]
    weights = np.array([3.0 if i % every == 0 else 1.0 for i in range(len(pairs))])
    return [list(column) for column in zip(*repeated, strict=True)], weights


def test_a_pipeline_gets_its_weights_through_metadata_routing(clinc):
    train, held_out = clinc
    pairs = sorted(set(train))[:600]
    texts, intents = map(list, zip(*pairs, strict=True))
    (repeated_texts, repeated_intents), weights = _tripled(pairs)
    probe = [text for text, _ in held_out[:60]]

    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
    weighted = DistinctRowsClassifier(pipeline).fit(texts, intents, sample_weight=weights)
    repeated = DistinctRowsClassifier(pipeline).fit(repeated_texts, repeated_intents)
    np.testing.assert_allclose(weighted.predict_proba(probe), repeated.predict_proba(probe))
    # The logistic regression itself got them: as if given to it by name, unlike no weights.
    explicit = clone(pipeline).fit(
        texts, intents, logisticregression__sample_weight=weights / weights.mean()
    )
    np.testing.assert_allclose(weighted.predict_proba(probe), explicit.predict_proba(probe))
    unweighted = DistinctRowsClassifier(pipeline).fit(texts, intents)
    assert not np.allclose(unweighted.predict_proba(probe), weighted.predict_proba(probe))


def test_an_estimator_without_weights_is_fitted_on_repeated_rows(clinc, monkeypatch):
    train, held_out = clinc
    pairs = sorted(set(train))[:400]
    texts, intents = map(list, zip(*pairs, strict=True))
    (repeated_texts, repeated_intents), weights = _tripled(pairs, every=2)
    probe = [text for text, _ in held_out[:60]]

    pipeline = make_pipeline(TfidfVectorizer(), KNeighborsClassifier(n_neighbors=5))
    weighted = DistinctRowsClassifier(pipeline).fit(texts, intents, sample_weight=weights)
    # The rows repeated in the sorted order DistinctRowsClassifier fits them in.
    order = sorted(
        range(len(repeated_texts)), key=lambda i: (repeated_texts[i], repeated_intents[i])
    )
    by_hand = clone(pipeline).fit(
        [repeated_texts[i] for i in order], [repeated_intents[i] for i in order]
    )
    np.testing.assert_allclose(weighted.predict_proba(probe), by_hand.predict_proba(probe))
    # Counts that all share a factor are the same repetition: replays change nothing.
    doubled = DistinctRowsClassifier(pipeline).fit(texts, intents, sample_weight=2 * weights)
    np.testing.assert_allclose(doubled.predict_proba(probe), weighted.predict_proba(probe))

    with pytest.raises(
        ValueError,
        match=r"Pipeline \(ending in KNeighborsClassifier\) takes no sample_weight.*not whole",
    ):
        DistinctRowsClassifier(pipeline).fit(texts, intents, sample_weight=weights + 0.5)
    monkeypatch.setattr(models.batch.distinct_rows, "MAX_EXPANDED_ROWS", 100)
    with pytest.raises(ValueError, match="more than MAX_EXPANDED_ROWS"):
        DistinctRowsClassifier(pipeline).fit(texts, intents, sample_weight=weights)


def test_prepare_leaves_the_default_model_as_it_is():
    model = build_batch_model()
    prepared, notes = prepare_batch_model(model)
    assert prepared is model and notes == []


def test_prepare_calibrates_a_margin_only_model_and_says_so(clinc):
    prepared, notes = prepare_batch_model(linear_svc())
    assert notes[0] == "LinearSVC gives margins only: wrapped in temperature calibration"
    assert isinstance(prepared, DistinctRowsClassifier)
    pipeline = prepared.estimator
    assert isinstance(pipeline, Pipeline) and pipeline.steps[0][0] == "tfidf"
    assert isinstance(pipeline.steps[-1][1], TemperatureCalibratedClassifier)
    assert isinstance(pipeline.steps[-1][1].estimator, LinearSVC)

    train, held_out = clinc
    texts, intents = map(list, zip(*train, strict=True))
    prepared.fit(texts, intents)
    probabilities = prepared.predict_proba([text for text, _ in held_out[:50]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    truth = np.array([intent for _, intent in held_out[:50]])
    assert (prepared.classes_[probabilities.argmax(axis=1)] == truth).mean() >= 0.9

    bare, bare_notes = prepare_batch_model(LinearSVC())
    assert bare.estimator.__class__ is TemperatureCalibratedClassifier
    assert bare_notes[0] == "LinearSVC gives margins only: wrapped in temperature calibration"
    inside, inside_notes = prepare_batch_model(DistinctRowsClassifier(LinearSVC()))
    assert isinstance(inside.estimator, TemperatureCalibratedClassifier)
    assert inside_notes == ["LinearSVC gives margins only: wrapped in temperature calibration"]


def test_prepare_wraps_a_probabilistic_model_in_distinct_rows():
    pipeline = tfidf_logistic()
    prepared, notes = prepare_batch_model(pipeline)
    assert isinstance(prepared, DistinctRowsClassifier) and prepared.estimator is pipeline
    assert notes == [
        "Pipeline fitted on distinct rows weighted by their counts: wrapped in "
        "DistinctRowsClassifier"
    ]


def test_prepare_refuses_what_is_not_a_batch_model():
    with pytest.raises(ModelContractError, match=r"\(object\) lacks fit, get_params"):
        prepare_batch_model(object())
    with pytest.raises(ModelContractError, match="neither predict_proba nor decision_function"):
        prepare_batch_model(KNeighborsRegressor(), where="BATCH_MODEL")


@pytest.mark.parametrize(
    "module",
    [
        models.batch.distinct_rows,
        models.batch.features,
        models.batch.one_vs_rest,
        models.batch.recipe,
        models.batch.temperature,
        pipelines.batch.counts,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


ESTIMATORS = [
    DistinctRowsClassifier(LogisticRegression()),
    DistinctRowsClassifier(LogisticRegression(), count_weighting="log"),
    TemperatureCalibratedClassifier(LinearSVC(random_state=0)),
    # Converged tightly, weights and repeated rows reach the same optimum; at liblinear's
    # default tolerance they stay 1e-5 apart (scikit-learn expects LinearSVC to fail that check).
    ThreadedOneVsRest(LinearSVC(random_state=0, tol=1e-10, max_iter=100_000), n_jobs=2),
    TemperatureCalibratedClassifier(ColumnMajorMultinomialNB()),
    ColumnMajorMultinomialNB(),
    # Folds see repeated rows only once: weights are then exactly repetitions.
    DistinctRowsClassifier(TemperatureCalibratedClassifier(LinearSVC(random_state=0))),
]
# scikit-learn's array-API check only runs with SCIPY_ARRAY_API set and skips itself otherwise;
# these estimators take NumPy and SciPy input only, so it is left out rather than skipped.
CHECKS = [
    pytest.param(checked, check, id=f"{type(checked).__name__}-{check.func.__name__}-{i}")
    for estimator in ESTIMATORS
    for i, (checked, check) in enumerate(estimator_checks_generator(estimator))
    if "array_api" not in check.func.__name__
]


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
