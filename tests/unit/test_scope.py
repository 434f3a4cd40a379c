"""The scope decision: fitted on out-of-fold answers within its accuracy budget, catching
out-of-scope queries that the out-of-scope label alone misses, and travelling with the model."""

import doctest
import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import estimator_checks_generator

import models.scope
from models.batch.recipe import build_batch_model, prepare_batch_model
from models.scope import (
    OOS_LABEL,
    ScopeClassifier,
    ScopeDecision,
    _folds,
    answer_features,
    find_scope,
    judge_scope,
    scope_figures,
)
from pipelines.batch.holdout_report import score_holdout
from streams.dataset import CLINC150_DATA, load_dataset

INTENTS = 20  # the first intents in sorted order, to keep fits around a second


@pytest.fixture(scope="module")
def clinc():
    examples = load_dataset(CLINC150_DATA).examples
    kept = sorted({e.intent for e in examples if e.intent != OOS_LABEL})[:INTENTS]
    kept_set = {*kept, OOS_LABEL}
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for e in examples:
        if e.intent in kept_set:
            texts, intents = by_split.setdefault(e.split.removeprefix("oos_"), ([], []))
            texts.append(e.text)
            intents.append(e.intent)
    return by_split


@pytest.fixture(scope="module")
def scoped(clinc):
    texts, intents = clinc["train"]
    return ScopeClassifier(build_batch_model(n_jobs=1)).fit(texts, intents)


def test_the_decision_catches_out_of_scope_queries_the_label_alone_misses(scoped, clinc):
    texts, intents = clinc["test"]
    matrix = scoped.predict_proba(texts)
    decided = scope_figures(scoped.classes_, matrix, intents, scoped.scope_)
    by_label = scope_figures(scoped.classes_, matrix, intents, None)
    assert decided["oos_queries"] == 1000 and decided["in_scope_queries"] == 30 * INTENTS
    assert decided["oos_recall"] > by_label["oos_recall"] + 0.2
    assert decided["in_scope_accuracy"] > by_label["in_scope_accuracy"] - 0.05


def test_the_threshold_keeps_out_of_fold_accuracy_within_its_budget():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", OOS_LABEL]
    y = np.array(["a", "b", "c"] * 100 + [OOS_LABEL] * 60, dtype=object)
    matrix = rng.dirichlet(np.ones(4) * 0.5, size=len(y))
    matrix[np.arange(300), np.arange(300) % 3] += rng.random(300) * 2  # in scope: surer
    matrix /= matrix.sum(axis=1, keepdims=True)
    base = scope_figures(classes, matrix, y, ScopeDecision.top_probability(OOS_LABEL))
    recalls = []
    for cost in (0.0, 0.02, 0.05, 0.1):
        decision = ScopeDecision.fit(classes, matrix, y, accuracy_cost=cost)
        figures = scope_figures(classes, matrix, y, decision)
        assert figures["in_scope_accuracy"] >= base["in_scope_accuracy"] - cost - 1e-12
        recalls.append(figures["oos_recall"])
    assert recalls[0] == 0.0 and recalls == sorted(recalls) and recalls[-1] > 0.3


def test_without_out_of_scope_examples_the_top_probability_decides():
    classes = ["a", "b"]
    matrix = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.6, 0.4]])
    decision = ScopeDecision.fit(classes, matrix, ["a", "a", "b", "a"], accuracy_cost=0.25)
    assert decision.weights == (1.0, 0.0)
    assert decision.in_scope(classes, matrix).tolist() == [True, False, True, True]


def test_a_bad_accuracy_cost_is_refused():
    with pytest.raises(ValueError, match="accuracy_cost"):
        ScopeDecision.fit(["a"], np.ones((1, 1)), ["a"], accuracy_cost=2.0)


def test_answer_features_read_any_class_list():
    rows = np.array([[0.5, 0.3, 0.2]])
    assert answer_features(["a", OOS_LABEL, "b"], rows, OOS_LABEL).tolist() == [[0.5, 0.3]]
    assert answer_features(["a", "c", "b"], rows, OOS_LABEL).tolist() == [[0.5, 0.0]]
    assert answer_features([OOS_LABEL], np.array([[1.0]]), OOS_LABEL).tolist() == [[0.0, 1.0]]


def test_a_surer_answer_is_never_judged_less_in_scope(scoped):
    """The blend is often surer than the champion alone; the decision fitted on the champion's
    answers must not turn it away for that."""
    weights = scoped.scope_.weights
    assert weights[0] > 0 and weights[1] <= 0
    classes = list(scoped.classes_)
    rows = np.full((3, len(classes)), 0.0)
    rows[:, 0] = [0.4, 0.8, 1.0]
    rows[:, 1] = 1.0 - rows[:, 0]
    scores = scoped.scope_.scores(classes, rows)
    assert scores.tolist() == sorted(scores.tolist())


def test_without_a_decision_the_out_of_scope_label_decides():
    rows = np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])
    assert judge_scope(["a", OOS_LABEL, "b"], rows, None).tolist() == [True, False]
    assert judge_scope(["a", "c", "b"], rows, None).tolist() == [True, True]


def test_folds_keep_each_text_on_one_side():
    X = np.array(["x", "y", "x", "z", "y", "x", "w", "v"], dtype=object)
    folds = _folds(X, np.zeros(len(X)), cv=2, random_state=0)
    assert len(folds) == 2
    for train, test in folds:
        assert not set(X[train]) & set(X[test])
    assert _folds(X[:1], np.zeros(1), cv=2, random_state=0) == []


def test_too_few_rows_for_folds_never_turn_a_query_away():
    model = ScopeClassifier(LogisticRegression()).fit([[0.0], [1.0]], ["a", OOS_LABEL])
    assert model.scope_.threshold == -np.inf
    assert model.in_scope([[0.0], [1.0]]).tolist() == [True, True]


def test_the_decision_travels_with_the_prepared_and_pickled_model(scoped, clinc):
    prepared, _ = prepare_batch_model(ScopeClassifier(LogisticRegression(), cv=2))
    texts, intents = [[float(i % 7)] for i in range(40)], ["a", "b", OOS_LABEL, "a"] * 10
    prepared.fit(texts, intents)
    assert find_scope(prepared) is prepared.estimator_.scope_
    restored = pickle.loads(pickle.dumps(scoped))
    sample = clinc["test"][0][:50]
    assert np.array_equal(restored.in_scope(sample), scoped.in_scope(sample))
    assert find_scope(LogisticRegression()) is None


def test_docstring_examples():
    result = doctest.testmod(models.scope)
    assert result.attempted > 0 and result.failed == 0


CHECKS = [
    pytest.param(checked, check, id=f"{check.func.__name__}-{i}")
    for i, (checked, check) in enumerate(
        estimator_checks_generator(ScopeClassifier(LogisticRegression()))
    )
    if "array_api" not in check.func.__name__
]


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_holdout_report_judges_scope_as_serving_does(scoped, clinc):
    """The retrain's holdout scores carry in-scope accuracy and out-of-scope recall under the
    model's own decision, and leave them out when the holdout has no query of that kind."""
    texts, intents = clinc["test"]
    scores, _, _ = score_holdout(scoped, texts, intents, np.ones(len(texts)))
    expected = scope_figures(scoped.classes_, scoped.predict_proba(texts), intents, scoped.scope_)
    assert scores.first_seen_in_scope_accuracy == pytest.approx(expected["in_scope_accuracy"])
    assert scores.first_seen_oos_recall == pytest.approx(expected["oos_recall"])
    in_scope = [i for i, intent in enumerate(intents) if intent != OOS_LABEL]
    only_in_scope, _, _ = score_holdout(
        scoped, [texts[i] for i in in_scope], [intents[i] for i in in_scope], np.ones(len(in_scope))
    )
    metrics = only_in_scope.as_metrics("holdout_")
    assert "holdout_first_seen_oos_recall" not in metrics
    assert metrics["holdout_first_seen_in_scope_accuracy"] > 0.5
