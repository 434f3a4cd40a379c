"""Out of scope in the served answer: the champion's scope decision judges what is served, an
out-of-scope answer names the out-of-scope label with `in_scope` false, `top_k` keeps the best
in-scope intents, and the service's metrics count such answers."""

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from models.blend import Blender
from models.registry import ChampionInfo, ChampionModel
from models.scope import OOS_LABEL, ScopeClassifier
from models.snapshot import SpeedSnapshot
from models.speed_model import HashedTextNB
from models.texts import TextMemory
from serving.metrics import ServiceMetrics
from serving.model_state import LoadedModels
from serving.predict import predict_texts
from streams.dataset import CLINC150_DATA, load_dataset

INTENTS = ("alarm", "weather", "timer", "translate", OOS_LABEL)
IN_SCOPE_TEXT = "wake me up at seven tomorrow with an alarm"


@pytest.fixture(scope="module")
def rows():
    wanted = set(INTENTS)
    examples = [e for e in load_dataset(CLINC150_DATA).examples if e.intent in wanted]
    train = [e for e in examples if e.split in ("train", "oos_train")]
    test_oos = [e.text for e in examples if e.split == "oos_test"]
    return [e.text for e in train], [e.intent for e in train], test_oos


def pipeline():
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500))


@pytest.fixture(scope="module")
def scoped_champion(rows):
    texts, intents, _ = rows
    model = ScopeClassifier(pipeline()).fit(texts, intents)
    return ChampionModel(ChampionInfo("m", "3", "r", {0: 1}), model, TextMemory.of(texts))


def answers(models: LoadedModels, texts: list[str], **options):
    return predict_texts(models, texts, top_k=3, max_snapshot_age_s=math.inf, **options)


def test_an_out_of_scope_query_is_answered_as_such_with_in_scope_intents_listed(
    scoped_champion, rows
):
    oos_texts = rows[2]
    predictions = answers(LoadedModels(champion=scoped_champion), [IN_SCOPE_TEXT, *oos_texts])
    first, rest = predictions[0], predictions[1:]
    assert (first.intent, first.in_scope) == ("alarm", True)
    assert first.confidence == first.top_k[0].p
    turned_away = [p for p in rest if not p.in_scope]
    assert len(turned_away) > len(rest) / 2
    for prediction in turned_away:
        assert prediction.intent == OOS_LABEL
        assert prediction.confidence == pytest.approx(1.0 - prediction.top_k[0].p)
    for prediction in predictions:
        assert len(prediction.top_k) == 3
        assert OOS_LABEL not in {score.intent for score in prediction.top_k}
        assert prediction.in_scope == (prediction.intent != OOS_LABEL)


def test_the_blend_is_judged_and_the_label_is_a_setting(scoped_champion, rows):
    texts, intents, oos_texts = rows
    speed = HashedTextNB()
    for text, intent in zip(texts, intents, strict=True):
        speed.learn_one({"text": text}, intent)
    snapshot = SpeedSnapshot(model=speed, blender=Blender(), offsets={0: 1}, events_learnt=1)
    models = LoadedModels(champion=scoped_champion, snapshot=snapshot)
    predictions = answers(models, [IN_SCOPE_TEXT, *oos_texts[:50]], oos_label="out_of_scope")
    assert {p.source for p in predictions} == {"blend"}
    assert predictions[0].in_scope
    assert {p.intent for p in predictions if not p.in_scope} == {"out_of_scope"}
    assert sum(not p.in_scope for p in predictions) > 25


def test_without_a_scope_decision_the_out_of_scope_label_decides(rows):
    texts, intents, oos_texts = rows
    plain = pipeline().fit(texts, intents)
    champion = ChampionModel(ChampionInfo("m", "1", "r", {}), plain)
    predictions = answers(LoadedModels(champion=champion), oos_texts[:100])
    top_is_oos = plain.classes_[np.argmax(plain.predict_proba(oos_texts[:100]), axis=1)] == "oos"
    assert [not p.in_scope for p in predictions] == top_is_oos.tolist()


def test_out_of_scope_answers_are_counted_by_source(scoped_champion, rows):
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    predictions = answers(LoadedModels(champion=scoped_champion), [IN_SCOPE_TEXT, *rows[2][:20]])
    metrics.answered(predictions)
    counted = registry.get_sample_value("lambda_ml_out_of_scope_answers_total", {"source": "batch"})
    assert counted == sum(not p.in_scope for p in predictions) > 0


def test_the_blend_keeps_the_champion_s_abstention_unless_it_names_a_new_intent(
    scoped_champion, rows
):
    """The speed model's share of a blend dilutes the champion's out-of-scope probability; the
    champion's abstention on its own intents stands, and only an intent the speed model alone
    knows can overturn it."""
    texts, intents, oos_texts = rows
    examples = load_dataset(CLINC150_DATA).examples
    new = [e.text for e in examples if e.intent == "play_music" and e.split == "train"]
    new_tests = [e.text for e in examples if e.intent == "play_music" and e.split == "test"]
    speed = HashedTextNB()
    for text, intent in [*zip(texts, intents, strict=True), *((t, "play_music") for t in new)]:
        speed.learn_one({"text": text}, intent)
    snapshot = SpeedSnapshot(model=speed, blender=Blender(), offsets={0: 1}, events_learnt=1)
    blended_models = LoadedModels(champion=scoped_champion, snapshot=snapshot)
    alone = answers(LoadedModels(champion=scoped_champion), oos_texts)
    blended = answers(blended_models, oos_texts)
    overturned = [b for a, b in zip(alone, blended, strict=True) if not a.in_scope and b.in_scope]
    assert {p.intent for p in overturned} <= {"play_music"}
    assert sum(not p.in_scope for p in blended) > len(oos_texts) / 2
    named = answers(blended_models, new_tests)
    assert sum(p.in_scope and p.intent == "play_music" for p in named) > len(new_tests) / 2
