"""The serving layer through its ASGI app, in-process, with models from files (no MLflow).

Covers input validation (every bad input is a 4xx naming the field, never a 5xx), the
fallbacks between batch and speed models, the freshness guard, the union of intents, hot
reload, and the coalescer and the gauges on their own; then the speed model's vectorised
paths and the snapshots serving refuses.
"""

import asyncio
import gc
import json
import math
import os
import pickle
import random
import re
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from river import feature_extraction, naive_bayes
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from starlette.testclient import TestClient

from bench.champion_file import save_champion_file
from common.settings import MlflowSettings, ServingSettings
from models import prequential
from models.alternatives import river_naive_bayes, river_softmax
from models.blend import Blender
from models.champion_watch import FailureLog, RegistryChampions
from models.contracts import has_vectorised_proba
from models.model_spec import ModelSpec
from models.prequential import speed_probabilities
from models.registry import ChampionInfo, ChampionModel
from models.scope import ScopeClassifier
from models.snapshot import SnapshotHeader, SnapshotStore, SpeedSnapshot
from models.speed_model import HashedTextNB
from models.texts import TextMemory, text_keys
from pipelines.cli.serve import serve as serve_command
from pipelines.services.bento_server import SERVICE_NAME, bentoml_overrides
from serving import runtime
from serving.batching import Coalescer
from serving.metrics import ServiceMetrics
from serving.middleware import BoundedRequests
from serving.model_state import FileChampion, LoadedModels, ModelReloader
from serving.predict import predict_texts
from serving.schemas import Prediction
from serving.service import IntentClassifier
from streams.dataset import CLINC150_DATA, load_dataset
from streams.journal import Journal
from streams.outbox import Message
from streams.schema import parse_event, parse_feedback

BATCH_INTENTS = ("alarm", "weather", "timer", "translate")
SPEED_ONLY_INTENT = "play_music"


@pytest.fixture(scope="module")
def examples():
    wanted = {*BATCH_INTENTS, SPEED_ONLY_INTENT}
    return [e for e in load_dataset(CLINC150_DATA).examples if e.intent in wanted]


@pytest.fixture(scope="module")
def batch_model(examples):
    train = [e for e in examples if e.split == "train" and e.intent in BATCH_INTENTS]
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(
        [e.text for e in train], [e.intent for e in train]
    )


@pytest.fixture(scope="module")
def speed_model(examples):
    """Knows every intent the batch model knows, and one more that arrived later."""
    model = feature_extraction.BagOfWords(on="text") | naive_bayes.MultinomialNB()
    for example in examples:
        if example.split == "train":
            model.learn_one({"text": example.text}, example.intent)
    return model


def write_snapshot(directory: Path, model, offsets: dict[int, int], age_s: float = 0.0) -> None:
    SnapshotStore(directory).save(
        SpeedSnapshot(
            model=model,
            blender=Blender(),
            offsets=offsets,
            events_learnt=100,
            created_at=time.time() - age_s,
        )
    )


@contextmanager
def serve(monkeypatch, tmp_path: Path, **env: str):
    """The service's ASGI app with `SERVING_*` settings `env`; MLflow and Kafka are unreachable,
    and the query log is off unless `env` turns it on (its journal then in `tmp_path`)."""
    monkeypatch.setenv("SERVING_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    monkeypatch.setenv("SERVING_POLL_S", "0.05")
    monkeypatch.setenv("SERVING_QUERY_LOG", "false")
    monkeypatch.setenv("SERVING_QUERY_LOG_JOURNAL_DIR", str(tmp_path / "query-log"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    # BentoML registers its request metrics anew with each app: one app per process only.
    overrides = bentoml_overrides(SERVICE_NAME, workers=1, metrics=False)
    monkeypatch.setenv("BENTOML_CONFIG_OVERRIDES", overrides)
    for key, value in env.items():
        monkeypatch.setenv(f"SERVING_{key.upper()}", value)
    thresholds = gc.get_threshold()
    runtime.process_settings.cache_clear()  # read once per process: this "process" starts now
    try:
        with TestClient(IntentClassifier.to_asgi(), raise_server_exceptions=False) as client:
            yield client
    finally:  # the service tunes the collector for a server process, not for pytest's
        runtime.process_settings.cache_clear()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def wait_ready(client: TestClient) -> None:
    wait_for(lambda: client.get("/readyz").status_code == 200)


@pytest.fixture
def both(monkeypatch, tmp_path, batch_model, speed_model):
    save_champion_file(tmp_path / "champion.pkl", batch_model, "7", {0: 120, 1: 80})
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 130, 1: 95})
    with serve(monkeypatch, tmp_path, champion_path=str(tmp_path / "champion.pkl")) as client:
        wait_ready(client)
        yield client


def test_blended_answer_says_which_models_and_weights(both):
    response = both.post("/predict", json={"text": "wake me up at 7 am tomorrow"})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "blend" and body["intent"] == "alarm"
    assert body["confidence"] == body["top_k"][0]["p"]
    assert [s["p"] for s in body["top_k"]] == sorted((s["p"] for s in body["top_k"]), reverse=True)
    assert len(body["top_k"]) == 5 and {s["intent"] for s in body["top_k"]} == {
        *BATCH_INTENTS,
        SPEED_ONLY_INTENT,
    }
    # The snapshot's blender has learnt nothing yet: it trusts the champion alone.
    assert body["blend"] == {"batch_weight": 1.0, "speed_weight": 0.0}
    models = body["models"]
    assert models["batch_version"] == "7"
    assert models["batch_cutoff_offsets"] == {"0": 120, "1": 80}
    assert models["speed_snapshot_offsets"] == {"0": 130, "1": 95}
    assert 0 <= models["speed_snapshot_age_s"] < 60


def test_an_intent_only_the_speed_model_knows_can_win(both):
    body = both.post("/predict", json={"text": "play my favourite song by the beatles"}).json()
    assert body["intent"] == SPEED_ONLY_INTENT and body["source"] == "blend"


def test_predict_batch_answers_each_text_in_order(both):
    texts = ["set an alarm for 6 am", "will it rain today", "play some jazz music"]
    response = both.post("/predict_batch", json={"texts": texts})
    assert response.status_code == 200
    assert [p["intent"] for p in response.json()] == ["alarm", "weather", SPEED_ONLY_INTENT]
    single = both.post("/predict", json={"text": texts[1]}).json()
    assert response.json()[1]["top_k"] == single["top_k"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   \t\n"}, "text"),
        ({"text": "a" * 1001}, "text"),
        ({"text": 42}, "text"),
        ({"text": ["set an alarm"]}, "text"),
        ({"text": None}, "text"),
        ({}, "text"),
        ({"query": "set an alarm"}, "text"),
    ],
)
def test_bad_single_requests_are_4xx_naming_the_field(both, body, field):
    response = both.post("/predict", json=body)
    assert response.status_code == 400
    assert field in [loc for error in response.json()["detail"] for loc in error["loc"]]


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"texts": []}, "texts", 400),
        ({"texts": "set an alarm"}, "texts", 400),
        ({"texts": ["fine", ""]}, "texts", 400),
        ({"texts": ["fine", 3]}, "texts", 400),
        ({"text": "set an alarm"}, "texts", 400),
        ({"texts": ["set an alarm"] * 65}, "texts", 413),
    ],
)
def test_bad_batch_requests_are_4xx_naming_the_field(both, body, field, status):
    response = both.post("/predict_batch", json=body)
    assert response.status_code == status
    assert field in [loc for error in response.json()["detail"] for loc in error["loc"]]


def logged_validation_errors(caplog) -> list[ValidationError]:
    return [
        r.exc_info[1]
        for r in caplog.records
        if r.exc_info and isinstance(r.exc_info[1], ValidationError)
    ]


def test_bad_input_is_not_logged_but_a_validation_error_of_the_service_is(
    both, monkeypatch, caplog
):
    """BentoML answers 400 to any ValidationError and logs it with a traceback: a bad request
    body is the client's fault and is kept out of the log, but one raised while the service
    builds its answer is a server bug and must stay in it."""
    caplog.set_level("ERROR", logger="bentoml._internal.server.http_app")
    assert both.post("/predict", json={"text": ""}).status_code == 400
    assert both.post("/predict_batch", json={"texts": [3]}).status_code == 400
    assert logged_validation_errors(caplog) == []

    def incomplete_predictions(models, texts, **limits):
        return [Prediction(intent="alarm") for _ in texts]  # fields missing: ValidationError

    monkeypatch.setattr("serving.service.predict_texts", incomplete_predictions)
    assert both.post("/predict", json={"text": "set an alarm"}).status_code == 400
    assert both.post("/predict_batch", json={"texts": ["set an alarm"]}).status_code == 400
    assert [e.title for e in logged_validation_errors(caplog)] == ["Prediction", "Prediction"]


def test_a_text_of_exactly_1000_characters_after_trimming_is_accepted(both):
    assert both.post("/predict", json={"text": "  " + "a" * 1000 + "  "}).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"text": "set an alarm"', "application/json", 400),
        (b"\xff\xfe\x00", "application/json", 400),
        (b"", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"text": "x"}', "multipart/form-data; boundary=x", 415),
        (b"text=set+an+alarm", "application/x-www-form-urlencoded", 415),
        (b'{"text": "x"}', "application/vnd.bentoml+pickle", 415),
    ],
)
def test_malformed_bodies_are_4xx(both, content, content_type, status):
    response = both.post("/predict", content=content, headers={"content-type": content_type})
    assert response.status_code == status


def test_an_oversized_body_is_413_naming_the_limit(both):
    response = both.post("/predict", content=b'{"text": "' + b"a" * 2**20 + b'"}')
    assert response.status_code == 413 and "limit of 1048576 bytes" in response.json()["error"]
    assert both.post("/predict", json={"text": "set an alarm"}).status_code == 200


def test_every_answer_names_its_query_the_one_sent_or_a_new_one(both):
    sent = both.post("/predict", json={"text": "set an alarm", "query_id": " q-7 "}).json()
    assert sent["query_id"] == "q-7"
    made = [both.post("/predict", json={"text": "set an alarm"}).json() for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", m["query_id"]) for m in made)
    assert made[0]["query_id"] != made[1]["query_id"]
    texts = ["set an alarm", {"text": "will it rain", "query_id": "q-8", "user_id": "u1"}]
    answers = both.post("/predict_batch", json={"texts": texts}).json()
    assert answers[1]["query_id"] == "q-8" and len(answers[0]["query_id"]) == 32
    assert [a["intent"] for a in answers] == ["alarm", "weather"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/predict", {"text": "hi", "query_id": ""}, "query_id"),
        ("/predict", {"text": "hi", "query_id": "q" * 201}, "query_id"),
        ("/predict", {"text": "hi", "user_id": 7}, "user_id"),
        ("/predict", {"text": "hi", "device": "speaker"}, "device"),
        ("/predict_batch", {"texts": [{"query_id": "q-1"}]}, "texts"),
        ("/predict_batch", {"texts": [{"text": "hi", "locale": ""}]}, "texts"),
    ],
)
def test_bad_query_fields_are_4xx_naming_the_field(both, path, body, field):
    response = both.post(path, json=body)
    assert response.status_code == 400
    assert field in [loc for error in response.json()["detail"] for loc in error["loc"]]


@contextmanager
def logging_service(monkeypatch, tmp_path, batch_model, speed_model):
    """A service with both models and the query log on, Kafka unreachable: what it logs stays
    in its journal, under `tmp_path / "query-log"`."""
    save_champion_file(tmp_path / "champion.pkl", batch_model, "7", {0: 120, 1: 80})
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 130, 1: 95})
    champion = str(tmp_path / "champion.pkl")
    with serve(
        monkeypatch, tmp_path, champion_path=champion, query_log="true", query_log_top_k="2"
    ) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def logged(monkeypatch, tmp_path, batch_model, speed_model):
    with logging_service(monkeypatch, tmp_path, batch_model, speed_model) as client:
        yield client


def journaled(tmp_path: Path) -> list[Message]:
    """What the stopped service left in its journal for Kafka, in order."""
    journal = Journal(tmp_path / "query-log" / "slot-0", max_bytes=1 << 30)
    try:
        return [Message.decode(r) for r in journal.read(max_records=10**6).records]
    finally:
        journal.close()


def test_each_answered_query_is_journaled_with_what_was_served(
    monkeypatch, tmp_path, batch_model, speed_model
):
    with logging_service(monkeypatch, tmp_path, batch_model, speed_model) as client:
        single = client.post(
            "/predict", json={"text": "wake me up at 7", "user_id": "u1", "locale": "en-GB"}
        ).json()
        texts = ["will it rain", "set a timer"]
        batch = client.post("/predict_batch", json={"texts": texts}).json()
    # The service has stopped; its journal keeps what Kafka did not take.
    messages = journaled(tmp_path)
    assert [m.topic for m in messages] == ["queries"] * 3
    events = [parse_event(m.value) for m in messages]
    assert [m.key for m in messages] == [e.query_id.encode() for e in events]
    for event, answer in zip(events, [single, *batch], strict=True):
        assert event.query_id == answer["query_id"]
        assert event.intent is None  # what was served is not a label
        served = event.served
        assert served is not None
        assert (served.intent, served.confidence, served.source) == (
            answer["intent"],
            answer["confidence"],
            "blend",
        )
        assert [(s.intent, s.p) for s in served.top_k] == [
            (s["intent"], s["p"]) for s in answer["top_k"][:2]
        ]
        blend = answer["blend"]
        assert (served.batch_weight, served.speed_weight) == (
            blend["batch_weight"],
            blend["speed_weight"],
        )
        assert served.batch_version == "7" and served.speed_offsets == {0: 130, 1: 95}
    first = events[0]
    assert (first.text, first.user_id, first.locale) == ("wake me up at 7", "u1", "en-GB")
    assert [e.text for e in events[1:]] == texts


def test_feedback_takes_one_label_or_several_and_journals_them_keyed_by_query(
    monkeypatch, tmp_path, batch_model, speed_model
):
    items = [
        {"query_id": "q-2", "intent": "a_brand_new_intent", "source": "annotation-tool"},
        {"query_id": "q-3", "intent": "weather"},
    ]
    with logging_service(monkeypatch, tmp_path, batch_model, speed_model) as client:
        one = client.post("/feedback", json={"query_id": "q-1", "intent": "alarm"})
        several = client.post("/feedback", json={"items": items})
    assert one.status_code == 202 and one.json() == {"accepted": 1}
    assert several.status_code == 202 and several.json() == {"accepted": 2}
    messages = journaled(tmp_path)
    assert {m.topic for m in messages} == {"queries.feedback"}
    labels = [(m.key, parse_feedback(m.value)) for m in messages]
    assert [(key, e.query_id, e.intent, e.source) for key, e in labels] == [
        (b"q-1", "q-1", "alarm", "feedback-api"),
        (b"q-2", "q-2", "a_brand_new_intent", "annotation-tool"),
        (b"q-3", "q-3", "weather", "feedback-api"),
    ]


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"query_id": "q-1"}, "intent", 400),
        ({"intent": "alarm"}, "query_id", 400),
        ({"query_id": "q-1", "intent": ""}, "intent", 400),
        ({"query_id": "q-1", "intent": "x" * 201}, "intent", 400),
        ({"query_id": 5, "intent": "alarm"}, "query_id", 400),
        ({"query_id": "q-1", "intent": "alarm", "label": "alarm"}, "label", 400),
        ({"items": []}, "items", 400),
        ({"items": [{"query_id": "q-1"}]}, "items", 400),
        ({"items": [{"query_id": "q-1", "intent": "alarm"}], "query_id": "q-2"}, "items", 400),
        ({"items": [{"query_id": "q", "intent": "alarm"}] * 65}, "items", 413),
    ],
)
def test_malformed_feedback_is_4xx_naming_the_field(logged, body, field, status):
    response = logged.post("/feedback", json=body)
    assert response.status_code == status, response.text
    assert field in [loc for error in response.json()["detail"] for loc in error["loc"]]


def test_feedback_is_503_when_the_query_log_is_off(both):
    response = both.post("/feedback", json={"query_id": "q-1", "intent": "alarm"})
    assert response.status_code == 503 and "SERVING_QUERY_LOG" in response.json()["error"]
    assert both.post("/predict", json={"text": "set an alarm"}).status_code == 200


LIMITS = ServingSettings(max_body_bytes=10, body_timeout_s=0.05, max_header_bytes=100)


def call_bounded(messages: list[dict], headers: list[tuple[bytes, bytes]], method: str = "POST"):
    """`BoundedRequests` around an app that reads one message and answers 200: what was sent
    back, and what the app received. The client sends `messages`, then nothing more."""
    sent: list[dict] = []
    received: list[dict] = []

    async def app(scope, receive, send):
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        if not messages:
            await asyncio.sleep(3600)
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/predict", "headers": headers}
    asyncio.run(BoundedRequests(app, LIMITS)(scope, receive, send))
    status = sent[0]["status"] if sent else None
    return status, (json.loads(sent[1]["body"]) if status and status != 200 else None), received


def body(chunk: bytes, more: bool = False) -> dict:
    return {"type": "http.request", "body": chunk, "more_body": more}


def test_a_body_within_the_limits_reaches_the_app_in_one_message():
    status, _, received = call_bounded([body(b"12345", more=True), body(b"67890")], [])
    assert status == 200 and received == [body(b"1234567890")]


@pytest.mark.parametrize(
    ("messages", "headers", "status", "words"),
    [
        ([body(b"{}")], [(b"content-length", b"11")], 413, "a body of 11 bytes"),
        ([body(b"123456", more=True), body(b"12345")], [], 413, "longer than the limit of 10"),
        ([body(b"12345", more=True)], [], 408, "not all received within 0.05s"),
        ([], [], 408, "not all received"),
        ([body(b"{}")], [(b"x-padding", b"a" * 100)], 431, "over the limit of 100"),
    ],
)
def test_requests_over_the_limits_are_refused_before_the_app(messages, headers, status, words):
    got, answer, received = call_bounded(messages, headers)
    assert (got, received) == (status, [])
    assert words in answer["error"] and answer["detail"][0]["loc"]


def test_a_client_gone_mid_body_gets_no_answer_and_the_app_no_call():
    gone = {"type": "http.disconnect"}
    assert call_bounded([body(b"12", more=True), gone], []) == (None, None, [])


def test_requests_without_a_body_pass_through_untouched():
    status, _, received = call_bounded([body(b"")], [], method="GET")
    assert status == 200 and received == [body(b"")]


def test_batch_champion_alone_answers(monkeypatch, tmp_path, batch_model):
    save_champion_file(tmp_path / "champion.pkl", batch_model, "3")
    with serve(monkeypatch, tmp_path, champion_path=str(tmp_path / "champion.pkl")) as client:
        wait_ready(client)
        body = client.post("/predict", json={"text": "what's the weather in paris"}).json()
    assert body["source"] == "batch" and body["intent"] == "weather"
    assert body["blend"] == {"batch_weight": 1.0, "speed_weight": 0.0}
    assert body["models"]["speed_snapshot_offsets"] is None
    assert len(body["top_k"]) == len(BATCH_INTENTS)


def test_speed_snapshot_alone_answers_while_mlflow_is_down(monkeypatch, tmp_path, speed_model):
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 9})
    with serve(monkeypatch, tmp_path) as client:
        wait_ready(client)
        body = client.post("/predict", json={"text": "play a song by queen"}).json()
    assert body["source"] == "speed" and body["intent"] == SPEED_ONLY_INTENT
    assert body["models"]["batch_version"] is None
    assert body["models"]["speed_snapshot_offsets"] == {"0": 9}


def test_no_model_is_503_with_a_reason_and_not_ready(monkeypatch, tmp_path):
    with serve(monkeypatch, tmp_path) as client:
        time.sleep(0.2)  # a few reload rounds that find nothing
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        response = client.post("/predict", json={"text": "set an alarm"})
        batch = client.post("/predict_batch", json={"texts": ["set an alarm"]})
    assert response.status_code == 503 and "no model is loaded" in response.json()["error"]
    assert batch.status_code == 503


def test_a_stale_snapshot_is_not_used(monkeypatch, tmp_path, batch_model, speed_model):
    save_champion_file(tmp_path / "champion.pkl", batch_model, "3")
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 9}, age_s=120)
    champion = str(tmp_path / "champion.pkl")
    with serve(monkeypatch, tmp_path, champion_path=champion, max_snapshot_age_s="60") as client:
        wait_ready(client)
        body = client.post("/predict", json={"text": "play a song by queen"}).json()
    assert body["source"] == "batch" and body["intent"] != SPEED_ONLY_INTENT


def test_a_stale_snapshot_alone_is_503(monkeypatch, tmp_path, speed_model):
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 9}, age_s=120)
    with serve(monkeypatch, tmp_path, max_snapshot_age_s="60") as client:
        time.sleep(0.2)
        assert client.get("/readyz").status_code == 503
        assert client.post("/predict", json={"text": "a song"}).status_code == 503


def test_new_models_are_picked_up_without_a_restart(both, tmp_path, batch_model, speed_model):
    save_champion_file(tmp_path / "champion.pkl", batch_model, "8", {0: 500})
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 510, 1: 99})

    def models():
        return both.post("/predict", json={"text": "set an alarm"}).json()["models"]

    wait_for(lambda: models()["batch_version"] == "8")
    wait_for(lambda: models()["speed_snapshot_offsets"] == {"0": 510, "1": 99})
    assert models()["batch_cutoff_offsets"] == {"0": 500}


def test_a_corrupt_champion_file_keeps_the_models_in_use(both, tmp_path):
    (tmp_path / "champion.pkl").write_bytes(b"not a pickle")
    time.sleep(0.3)
    body = both.post("/predict", json={"text": "set an alarm"}).json()
    assert body["models"]["batch_version"] == "7" and body["source"] == "blend"


class UnusableModel:
    """Loads fine, fails to predict: like a model pickled by an incompatible version."""

    def predict_proba_one(self, x):
        raise AttributeError("'Blender' object has no attribute 'inner_loss'")


def test_a_snapshot_that_cannot_predict_never_reaches_a_request(both, tmp_path):
    write_snapshot(tmp_path / "snapshots", UnusableModel(), {0: 999})
    time.sleep(0.3)
    response = both.post("/predict", json={"text": "set an alarm"})
    assert response.status_code == 200
    assert response.json()["models"]["speed_snapshot_offsets"] == {"0": 130, "1": 95}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
short_texts = st.text(max_size=210) | json_values
request_bodies = (
    json_values
    | st.fixed_dictionaries({"text": json_values})
    | st.fixed_dictionaries({"text": st.text(max_size=1100)}, optional={"query_id": short_texts})
    | st.fixed_dictionaries({"texts": st.lists(st.text(max_size=50) | json_values, max_size=70)})
    | st.fixed_dictionaries({"query_id": short_texts, "intent": short_texts})
    | st.fixed_dictionaries(
        {"items": st.lists(st.fixed_dictionaries({"query_id": short_texts}), max_size=70)}
    )
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, batch_model, speed_model):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    save_champion_file(tmp_path / "champion.pkl", batch_model, "1")
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 1})
    with pytest.MonkeyPatch.context() as monkeypatch:
        champion = str(tmp_path / "champion.pkl")
        with serve(monkeypatch, tmp_path, champion_path=champion, query_log="true") as client:
            wait_ready(client)
            yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=request_bodies, path=st.sampled_from(["/predict", "/predict_batch", "/feedback"]))
def test_generated_bodies_never_get_a_5xx(fuzz_client, body, path):
    response = fuzz_client.post(path, content=json.dumps(body).encode())
    assert response.status_code < 500, response.text


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=200))
def test_generated_bytes_never_get_a_5xx(fuzz_client, content):
    response = fuzz_client.post("/predict", content=content)
    assert response.status_code < 500, response.text


def test_openapi_spec_lists_the_endpoints(fuzz_client):
    paths = fuzz_client.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/feedback"} <= set(paths)


def test_coalescer_runs_concurrent_requests_in_one_call():
    calls: list[list[str]] = []

    def upper(texts: list[str]) -> list[str]:
        calls.append(texts)
        return [t.upper() for t in texts]

    async def late(coalescer: Coalescer, texts: list[str], turns: int) -> list[str]:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await coalescer(texts)

    async def scenario():
        coalescer = Coalescer(upper, max_items=3)
        alone = await coalescer(["a"])
        joined = await asyncio.gather(coalescer(["b"]), late(coalescer, ["c"], 2))
        split = await asyncio.gather(coalescer(["d"]), coalescer(["e", "f"]), coalescer(["g"] * 4))
        return [alone, *joined, *split]

    assert asyncio.run(scenario()) == [["A"], ["B"], ["C"], ["D"], ["E", "F"], ["G"] * 4]
    # Alone when idle; together when arriving within a few loop turns, up to max_texts (a
    # single request over it still goes whole).
    assert calls == [["a"], ["b", "c"], ["d", "e", "f"], ["g"] * 4]


def test_coalescer_raises_the_error_in_every_request_of_the_call():
    def fail(texts: list[str]) -> list[str]:
        raise ValueError("broken model")

    async def scenario():
        coalescer = Coalescer(fail, max_items=10)
        return await asyncio.gather(coalescer(["a"]), coalescer(["b"]), return_exceptions=True)

    assert [str(e) for e in asyncio.run(scenario())] == ["broken model", "broken model"]


def test_gauges_report_the_models_in_use(tmp_path, batch_model, speed_model):
    save_champion_file(tmp_path / "champion.pkl", batch_model, "12")
    write_snapshot(tmp_path / "snapshots", speed_model, {0: 1}, age_s=30)
    registry = CollectorRegistry()
    gauges = ServiceMetrics(registry)
    state = ModelReloader(
        FileChampion(tmp_path / "champion.pkl"),
        SnapshotStore(tmp_path / "snapshots"),
        on_poll=gauges.publish,
    )
    assert state.refresh()
    assert registry.get_sample_value("lambda_ml_batch_model_version") == 12
    assert registry.get_sample_value("lambda_ml_speed_snapshot_sequence") == 1
    assert 29 < registry.get_sample_value("lambda_ml_speed_snapshot_age_seconds") < 60
    assert not state.refresh()  # nothing new: nothing reloaded


def test_answers_are_counted_by_source_with_their_confidence_and_call_size(speed_model):
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    texts = ["wake me up at seven", "what's the weather", "set a timer"]
    predictions = predict_texts(speed_only(speed_model), texts, top_k=1, max_snapshot_age_s=1e9)
    metrics.answered(predictions)
    metrics.answered(predictions[:1])
    value = registry.get_sample_value
    assert value("lambda_ml_answers_total", {"source": "speed"}) == 4
    assert value("lambda_ml_answers_total", {"source": "blend"}) is None
    assert value("lambda_ml_coalesced_batch_size_count") == 2
    assert value("lambda_ml_coalesced_batch_size_sum") == 4
    assert value("lambda_ml_coalesced_batch_size_bucket", {"le": "2.0"}) == 1
    confidences = [p.confidence for p in predictions] + [predictions[0].confidence]
    assert value("lambda_ml_answer_confidence_sum", {"source": "speed"}) == pytest.approx(
        sum(confidences)
    )


def test_serve_command_runs_bentoml_with_the_options(monkeypatch):
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    monkeypatch.setattr(os, "environ", {**environ, "SERVING_PORT": "3100"})  # it sets some
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    serve_command(port=None, host=None, workers=3, reload_interval=1.5, keep_access_log=True)
    (argv,) = execs
    assert argv[1:] == [
        "-m",
        "bentoml",
        "serve",
        "serving.service:IntentClassifier",
        "--host",
        "127.0.0.1",
        "--port",
        "3100",
    ]
    assert os.environ["SERVING_POLL_S"] == "1.5"
    overrides = json.loads(os.environ["BENTOML_CONFIG_OVERRIDES"])["services"][SERVICE_NAME]
    assert overrides["workers"] == 3 and overrides["logging"]["access"]["enabled"] is True
    # The workers share the server's output: buffered, their log records would interleave.
    assert os.environ["PYTHONUNBUFFERED"] == "1"


class DictsOnly:
    """A speed model as plain River models are: `predict_proba_one` and nothing vectorised."""

    def __init__(self, model) -> None:
        self.model = model

    def predict_proba_one(self, x):
        return self.model.predict_proba_one(x)


def test_a_speed_model_without_the_vectorised_method_answers_like_one_with_it(
    examples, batch_model
):
    """A River-style speed model's dicts go through the same numeric path as `HashedTextNB`'s
    matrix: same answers, for texts the champion trained on (the blender's weights for those)
    and texts it did not, blended or alone."""
    speed = HashedTextNB()
    blender = Blender()
    train = [e for e in examples if e.split == "train"]
    trained_on = TextMemory.of(e.text for e in train[::2])
    champion = ChampionModel(ChampionInfo("m", "7", "r", {0: 1}), batch_model, trained_on)
    for example in train:
        speed.learn_one({"text": example.text}, example.intent)
    for example in train[::7]:
        batch = champion.predict_proba_many([example.text])[0]
        speed_p = speed.predict_proba_one({"text": example.text})
        blender.learn(batch, speed_p, example.intent, example.text in trained_on)
    assert blender.weights_for(batch_seen=True) != blender.weights_for(batch_seen=False)
    texts = [e.text for e in examples if e.split == "test"][:40] + ["", "play some jazz"]
    texts += [e.text for e in train[:10]]  # half of them trained on

    def snapshot(model) -> SpeedSnapshot:
        return SpeedSnapshot(model=model, blender=blender, offsets={0: 1}, events_learnt=1)

    for with_champion in (champion, None):
        vectorised, dicts = (
            predict_texts(
                LoadedModels(champion=with_champion, snapshot=snapshot(model)),
                texts,
                top_k=3,
                max_snapshot_age_s=math.inf,
            )
            for model in (speed, DictsOnly(speed))
        )
        assert len(vectorised) == len(dicts) == len(texts)
        if with_champion is not None:
            seen = trained_on.contains_keys(text_keys(texts))
            weights = {flag: blender.weights_for(batch_seen=flag) for flag in (False, True)}
            assert [(g.blend.batch_weight, g.blend.speed_weight) for g in dicts] == [
                weights[bool(flag)] for flag in seen
            ]
        for v, d in zip(vectorised, dicts, strict=True):
            assert (v.intent, v.source, v.blend) == (d.intent, d.source, d.blend)
            # The same models, read a moment apart (the snapshot's age moves on).
            assert v.models.model_copy(update={"speed_snapshot_age_s": None}) == (
                d.models.model_copy(update={"speed_snapshot_age_s": None})
            )
            assert [s.intent for s in v.top_k] == [s.intent for s in d.top_k]
            for a, b in zip(v.top_k, d.top_k, strict=True):
                assert a.p == pytest.approx(b.p, rel=1e-12, abs=1e-15)
    models = LoadedModels(champion=champion, snapshot=snapshot(DictsOnly(speed)))
    assert predict_texts(models, [], top_k=3, max_snapshot_age_s=math.inf) == []


def test_the_log_filter_knows_the_request_bodies_bentoml_validates():
    """The filter recognises a client's bad body by the name BentoML gives its model."""
    titles = {api.input_spec.__name__ for api in IntentClassifier.apis.values()}
    assert titles == runtime._REQUEST_BODY_TITLES


def test_the_champion_store_is_the_file_when_one_is_set_else_the_registry(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    mlflow = MlflowSettings(tracking_uri="http://127.0.0.1:9", registered_model="m")
    file = runtime.champion_store(ServingSettings(champion_path=tmp_path / "c.pkl"), mlflow)
    assert isinstance(file, FileChampion) and file.path == tmp_path / "c.pkl"
    registry = runtime.champion_store(ServingSettings(champion_path=None), mlflow)
    assert isinstance(registry, RegistryChampions) and registry.name == "m"
    assert registry.client.tracking_uri == "http://127.0.0.1:9"
    # Fail fast unless told otherwise: the reloader asks again at its next round.
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_a_run_of_failed_reloads_logs_one_traceback_then_one_line_each_then_the_recovery(caplog):
    failures = FailureLog("reading the batch champion")
    caplog.set_level("INFO", logger="models.champion_watch")
    for _ in range(3):
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError as cause:
                raise RuntimeError("API request to http://mlflow failed after 5 retries") from cause
        except RuntimeError as exc:
            failures.failed(exc)
    failures.succeeded()
    failures.succeeded()
    records = caplog.records
    assert [r.levelname for r in records] == ["WARNING"] * 3 + ["INFO"]
    assert [r.exc_info is not None for r in records[:3]] == [True, False, False]
    # Named by the step the FailureLog was made for, as no other was given.
    failed = [r.getMessage() for r in records[:3]]
    assert all(m.startswith("reading the batch champion failed (") for m in failed)
    assert "<- ConnectionRefusedError: [Errno 111] Connection refused" in records[2].getMessage()
    assert "3 in a row" in records[2].getMessage()
    assert "works again after 3 failed attempts" in records[3].getMessage()


# The speed model's vectorised paths, and snapshots serving refuses


class VectorisedRiver(DictsOnly):
    """A River-style model whose `predict_proba_many` works: a DataFrame in, one out."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.many_calls = 0

    def predict_proba_many(self, frame):
        self.many_calls += 1
        classes, matrix = self.model.predict_proba_matrix(list(frame["text"]))
        return pd.DataFrame(matrix, columns=classes, index=frame.index)


def assert_same_answers(got: list[Prediction], expected: list[Prediction]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert [s.intent for s in g.top_k] == [s.intent for s in e.top_k]
        assert [s.p for s in g.top_k] == pytest.approx([s.p for s in e.top_k], rel=1e-3, abs=1e-6)


def speed_only(model) -> LoadedModels:
    return LoadedModels(
        snapshot=SpeedSnapshot(model=model, blender=Blender(), offsets={0: 1}, events_learnt=1)
    )


def test_a_working_predict_proba_many_scores_all_texts_in_one_call(examples, monkeypatch):
    monkeypatch.setattr(prequential, "_UNTRUSTED_MANY", set())
    speed = HashedTextNB()
    for example in examples:
        if example.split == "train":
            speed.learn_one({"text": example.text}, example.intent)
    texts = [e.text for e in examples if e.split == "test"][:30] + ["", "zzz qqq"]
    vectorised = VectorisedRiver(speed)
    assert has_vectorised_proba(vectorised)
    got = predict_texts(speed_only(vectorised), texts, top_k=3, max_snapshot_age_s=math.inf)
    expected = predict_texts(speed_only(DictsOnly(speed)), texts, top_k=3, max_snapshot_age_s=1e9)
    assert vectorised.many_calls == 1
    assert_same_answers(got, expected)
    # One text is scored alone: a one-row DataFrame would only cost more.
    predict_texts(speed_only(vectorised), texts[:1], top_k=3, max_snapshot_age_s=math.inf)
    assert vectorised.many_calls == 1


@pytest.mark.parametrize("intents", [None, BATCH_INTENTS[:4]], ids=["150 intents", "4 intents"])
def test_river_naive_bayes_answers_as_it_does_text_by_text(intents, monkeypatch, caplog):
    """River 0.26's MultinomialNB, trained one event at a time, mislabels the classes of its
    `predict_proba_many`: the check against `predict_proba_one` catches it, once, and the texts
    are scored one by one, so the answers are `predict_proba_one`'s. With four intents (a
    stream of two shuffled passes, some events unlabelled) the longest text's answer is wrong
    only in classes of negligible probability, which only log-probabilities tell apart."""
    monkeypatch.setattr(prequential, "_UNTRUSTED_MANY", set())
    model = river_naive_bayes()
    assert has_vectorised_proba(model)
    dataset = load_dataset(CLINC150_DATA).examples
    train = [e for e in dataset if e.split == "train" and (intents is None or e.intent in intents)]
    rng = random.Random(5)
    stream = train * 2
    rng.shuffle(stream)
    for example in stream:
        if rng.random() >= 0.1:
            model.learn_one({"text": example.text}, example.intent)
    texts = [e.text for e in train[:400]]
    expected = predict_texts(speed_only(DictsOnly(model)), texts, top_k=5, max_snapshot_age_s=1e9)
    with caplog.at_level("WARNING", logger="models.prequential"):
        for _ in range(3):
            got = predict_texts(speed_only(model), texts, top_k=5, max_snapshot_age_s=1e9)
            assert_same_answers(got, expected)
    # Only this path's: a service of another test may still be logging from its threads.
    warnings = [r.getMessage() for r in caplog.records if r.name == "models.prequential"]
    assert warnings == [
        "not using predict_proba_many of BagOfWords | MultinomialNB: it disagrees with "
        "predict_proba_one; scoring input by input instead"
    ]
    classes, row = speed_probabilities(model, {"text": texts[0]})  # the prequential path
    assert dict(zip(classes, row.tolist(), strict=True)) == model.predict_proba_one(
        {"text": texts[0]}
    )


def test_a_vectorised_path_that_fails_falls_back_to_one_text_at_a_time(monkeypatch, caplog):
    monkeypatch.setattr(prequential, "_UNTRUSTED_MANY", set())
    model = river_softmax()  # its pipeline has predict_proba_many, its last step does not
    model.learn_one({"text": "set an alarm"}, "alarm")
    model.learn_one({"text": "rain tomorrow"}, "weather")
    assert not has_vectorised_proba(model)
    classes, matrix = prequential.speed_probability_matrix(
        model, [{"text": "an alarm"}, {"text": "rain"}]
    )
    assert set(classes) == {"alarm", "weather"} and matrix.shape == (2, 2)

    class Broken(DictsOnly):
        def predict_proba_many(self, frame):
            raise NotImplementedError("no batch scoring")

    broken = Broken(HashedTextNB())
    broken.model.learn_one("set an alarm", "alarm")
    with caplog.at_level("WARNING", logger="models.prequential"):
        for _ in range(2):
            classes, matrix = prequential.speed_probability_matrix(broken, [{"text": "a"}] * 2)
    assert classes == ["alarm"] and matrix.tolist() == [[1.0], [1.0]]
    assert len(caplog.records) == 1
    assert "it failed (NotImplementedError: no batch scoring)" in caplog.records[0].getMessage()


def trained_speed_model(examples) -> HashedTextNB:
    model = HashedTextNB()
    for example in examples[:200]:
        model.learn_one({"text": example.text}, example.intent)
    return model


class Vanishing:
    """A speed model pickled by reference to a module a serving process may not have."""

    def learn_one(self, x, y) -> None: ...

    def predict_proba_one(self, x) -> dict:
        return {"alarm": 1.0}


def save_vanishing_snapshot(directory: Path, partition: int | None = None) -> Path:
    module = types.ModuleType("custom_speed_models")
    module.Vanishing = type("Vanishing", (Vanishing,), {"__module__": "custom_speed_models"})
    sys.modules["custom_speed_models"] = module
    try:
        snapshot = SpeedSnapshot(
            model=module.Vanishing(),
            blender=Blender(),
            offsets={partition or 0: 50},
            events_learnt=9,
            partition=partition,
        )
        snapshot.header = SnapshotHeader.current(ModelSpec("custom_speed_models:Vanishing"))
        return Path(SnapshotStore(directory).save(snapshot))
    finally:
        del sys.modules["custom_speed_models"]


class CountingStore(SnapshotStore):
    """Counts the snapshots read, in all and per partition."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.reads = 0
        self.read_partitions: list[int | None] = []

    def latest(self, partition=None):
        self.reads += 1
        self.read_partitions.append(partition)
        return super().latest(partition)


def test_a_snapshot_whose_model_cannot_be_imported_is_refused_once(examples, tmp_path, caplog):
    store = CountingStore(tmp_path)
    store.save(SpeedSnapshot(trained_speed_model(examples), Blender(), {0: 10}, 200))
    reloader = ModelReloader(None, store)
    assert reloader.refresh_snapshot()
    in_use = reloader.current
    path = save_vanishing_snapshot(tmp_path)
    caplog.clear()
    with caplog.at_level("INFO", logger="serving.model_state"):
        for _ in range(4):
            assert not reloader.refresh_snapshot()
    assert reloader.current is in_use  # still answering with what it had
    assert store.reads == 2  # the refused sequence is not read again at every poll
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            "WARNING",
            f"refusing speed snapshot {path}: ModuleNotFoundError: No module named "
            "'custom_speed_models' (its model: custom_speed_models:Vanishing {}); "
            "the models in use keep answering",
        )
    ]
    predict_texts(reloader.current, ["set an alarm"], top_k=1, max_snapshot_age_s=math.inf)
    store.save(SpeedSnapshot(trained_speed_model(examples), Blender(), {0: 60}, 200))
    assert reloader.refresh_snapshot()  # a newer snapshot is used again
    assert reloader.current.snapshot.offsets == {0: 60}


def test_a_snapshot_of_an_unknown_format_is_refused_once(examples, tmp_path, caplog):
    store = SnapshotStore(tmp_path)
    store.save(SpeedSnapshot(trained_speed_model(examples), Blender(), {0: 10}, 200))
    reloader = ModelReloader(None, store)
    assert reloader.refresh_snapshot()
    newer = tmp_path / "snapshot-000000000002.pkl"
    with newer.open("wb") as handle:
        pickle.dump({"format_version": 3, "model_spec": None, "versions": {}}, handle)
        pickle.dump({"a format": "from the future"}, handle)
    caplog.clear()
    with caplog.at_level("WARNING", logger="serving.model_state"):
        assert not reloader.refresh_snapshot()
        assert not reloader.refresh_snapshot()
    assert [r.getMessage() for r in caplog.records] == [
        f"refusing speed snapshot {newer}: format version 3 is not one this code reads (1, 2); "
        "the models in use keep answering"
    ]
    assert reloader.current.snapshot.offsets == {0: 10}


def test_an_old_snapshot_without_a_header_is_served(examples, tmp_path):
    old = SpeedSnapshot(trained_speed_model(examples), Blender(), {0: 10}, 200, sequence=1)
    del old.__dict__["header"]
    (tmp_path / "snapshot-000000000001.pkl").write_bytes(pickle.dumps(old))
    reloader = ModelReloader(None, SnapshotStore(tmp_path))
    assert reloader.refresh_snapshot()
    assert reloader.current.snapshot.header.format_version == 1
    (answer,) = predict_texts(
        reloader.current, ["set an alarm for 7"], top_k=1, max_snapshot_age_s=math.inf
    )
    assert answer.source == "speed"


def partition_snapshot(examples, partition: int, offset: int, share: int = 2) -> SpeedSnapshot:
    """Partition `partition`'s model, trained on its share of the examples."""
    model = HashedTextNB()
    mine = examples[partition:200:share]
    for example in mine:
        model.learn_one({"text": example.text}, example.intent)
    return SpeedSnapshot(model, Blender(), {partition: offset}, len(mine), partition=partition)


def test_the_partitions_snapshots_are_served_merged_and_only_new_ones_are_read(examples, tmp_path):
    store = CountingStore(tmp_path)
    for partition in (0, 1):
        store.save(partition_snapshot(examples, partition, 10))
    store.save(SpeedSnapshot(trained_speed_model(examples), Blender(), {0: 99}, 9))  # older
    reloader = ModelReloader(None, store)
    assert reloader.refresh_snapshot()
    served = reloader.current.snapshot
    assert served.offsets == {0: 10, 1: 10} and served.events_learnt == 200
    whole = trained_speed_model(examples)
    assert served.model.count_table() == whole.count_table()  # the sum: one model of both
    assert sorted(store.read_partitions) == [0, 1]  # the unpartitioned one is left aside
    store.read_partitions.clear()
    assert not reloader.refresh_snapshot()
    assert store.read_partitions == []  # nothing new: nothing read
    store.save(partition_snapshot(examples, 1, 30))
    assert reloader.refresh_snapshot()
    assert store.read_partitions == [1]  # only the partition with a new snapshot
    assert reloader.current.snapshot.offsets == {0: 10, 1: 30}


def test_a_partitions_snapshot_that_cannot_be_used_leaves_its_previous_one_in_the_merge(
    examples, tmp_path, caplog
):
    store = CountingStore(tmp_path)
    for partition in (0, 1):
        store.save(partition_snapshot(examples, partition, 10))
    reloader = ModelReloader(None, store)
    assert reloader.refresh_snapshot()
    path = save_vanishing_snapshot(tmp_path, partition=1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="serving.model_state"):
        assert not reloader.refresh_snapshot()
        store.save(partition_snapshot(examples, 0, 40))
        assert reloader.refresh_snapshot()  # partition 0 moved on
    assert reloader.current.snapshot.offsets == {0: 40, 1: 10}  # 1's previous snapshot stays
    assert [r.getMessage() for r in caplog.records] == [
        f"refusing speed snapshot {path}: ModuleNotFoundError: No module named "
        "'custom_speed_models' (its model: custom_speed_models:Vanishing {}); "
        "the models in use keep answering"
    ]
    assert store.read_partitions.count(1) == 2  # the refused one was read once


def test_the_out_of_scope_label_served_is_a_setting(monkeypatch, tmp_path):
    wanted = {*BATCH_INTENTS, "oos"}
    examples = [e for e in load_dataset(CLINC150_DATA).examples if e.intent in wanted]
    train = [e for e in examples if e.split in ("train", "oos_train")]
    outside = [e.text for e in examples if e.split == "oos_test"][:40]
    scoped = ScopeClassifier(
        make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500))
    ).fit([e.text for e in train], [e.intent for e in train])
    save_champion_file(tmp_path / "champion.pkl", scoped, "2", {0: len(train)})
    champion = str(tmp_path / "champion.pkl")
    with serve(monkeypatch, tmp_path, champion_path=champion, oos_label="not_mine") as client:
        wait_ready(client)
        answers = client.post("/predict_batch", json={"texts": outside}).json()
    turned_away = [a for a in answers if not a["in_scope"]]
    assert len(turned_away) > len(outside) / 2
    assert {a["intent"] for a in turned_away} == {"not_mine"}
    assert all(a["intent"] != "oos" for a in answers)
