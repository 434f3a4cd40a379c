"""The served query log against the real broker and the real `bentoml serve` (two workers).

Queries answered over HTTP reach the `queries` topic once each, with what was served; labels
sent to `/feedback` reach the feedback topic on their query's partition; and while Kafka is
stopped the service answers every request and delivers every answered query once it is back.
"""

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.champion_file import save_champion_file
from pipelines.services.broker import KafkaLauncher
from streams.schema import parse_event, parse_feedback
from tests.dead_letter_headers import dead_letter_reason
from tests.integration.cli_processes import run_to_end, stream_jobs_env
from tests.integration.conftest import throwaway_broker
from tests.integration.kafka_reading import read_all
from tests.integration.live_service import (
    fit_batch,
    serving_process,
    training_rows,
    wait_until,
    write_snapshot,
)

pytestmark = pytest.mark.integration

WORKERS = 2
PARTITIONS = 3
QUERIES, LABELLED = 300, 100
OUTAGE_S = 30.0
OUTAGE_REQUESTS = 2_000
CLIENTS = 4
TEXTS = ("wake me at 7", "is it going to snow", "set a timer for ten minutes", "say hi in french")


def logging_service(tmp_path: Path, kafka_env: dict[str, str]):
    """The live service on a champion file and a snapshot (no MLflow), logging to `kafka_env`'s
    topics."""
    rows = training_rows()
    save_champion_file(tmp_path / "champion.pkl", fit_batch(rows), "3", {0: 40})
    write_snapshot(tmp_path / "snapshots", rows, {0: 50})
    return serving_process(
        "http://127.0.0.1:9",  # unused: the champion comes from its file
        "unused",
        tmp_path / "snapshots",
        tmp_path,
        WORKERS,
        SERVING_CHAMPION_PATH=str(tmp_path / "champion.pkl"),
        **kafka_env,
    )


def metric(url: str, name: str) -> float:
    """A counter or gauge of `/metrics`, summed over its series (workers, labels)."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


def test_answered_queries_and_their_labels_reach_their_topics_once_each(kafka, tmp_path):
    topic, feedback_topic = kafka.new_topic(PARTITIONS), kafka.new_topic(PARTITIONS)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_FEEDBACK_TOPIC": feedback_topic,
    }
    run = uuid.uuid4().hex[:8]
    ids = [f"{run}-{i}" for i in range(QUERIES)]
    with logging_service(tmp_path, env) as server:
        server.wait_ready(timeout_s=180)

        def ask(i: int) -> dict:
            body = {"text": TEXTS[i % len(TEXTS)], "query_id": ids[i], "user_id": f"u{i % 7}"}
            response = httpx.post(f"{server.url}/predict", json=body, timeout=30.0)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = {a["query_id"]: a for a in pool.map(ask, range(QUERIES))}
        labels = {ids[i]: ("alarm", "a_new_intent")[i % 2] for i in range(0, QUERIES, 3)}
        labelled = list(labels.items())[:LABELLED]
        singles, several = labelled[: LABELLED // 2], labelled[LABELLED // 2 :]
        for query_id, intent in singles:
            response = httpx.post(
                f"{server.url}/feedback", json={"query_id": query_id, "intent": intent}
            )
            assert response.status_code == 202, response.text
        items = [{"query_id": q, "intent": i, "source": "annotation-tool"} for q, i in several]
        response = httpx.post(f"{server.url}/feedback", json={"items": items})
        assert response.status_code == 202 and response.json() == {"accepted": len(items)}

        queries = read_all(kafka.bootstrap, topic, QUERIES)
        feedback = read_all(kafka.bootstrap, feedback_topic, LABELLED)
        name = "lambda_ml_serving_query_log_sent_total"
        wait_until(lambda: metric(server.url, name) == QUERIES + LABELLED, timeout_s=30)
        backlog = metric(server.url, "lambda_ml_serving_query_log_backlog")
        dropped = metric(server.url, "lambda_ml_serving_query_log_dropped_total")

    assert sorted(answers) == sorted(ids)
    assert len(queries) == QUERIES
    events = [parse_event(record.value) for record in queries]
    assert sorted(e.query_id for e in events) == sorted(ids)
    partition_of = {}
    for record, event in zip(queries, events, strict=True):
        answer = answers[event.query_id]
        assert record.key == event.query_id.encode()
        assert event.intent is None and event.user_id is not None
        served = event.served
        assert served is not None
        assert (served.intent, served.confidence, served.source) == (
            answer["intent"],
            answer["confidence"],
            answer["source"],
        )
        assert [(s.intent, s.p) for s in served.top_k] == [
            (s["intent"], s["p"]) for s in answer["top_k"][:3]
        ]
        assert served.batch_version == "3" and served.speed_offsets == {0: 50}
        partition_of[event.query_id] = record.partition
    assert len(set(partition_of.values())) == PARTITIONS  # the keys spread over the partitions

    assert len(feedback) == LABELLED
    got = {}
    for record in feedback:
        label = parse_feedback(record.value)
        assert record.key == label.query_id.encode()
        assert record.partition == partition_of[label.query_id]  # with its query
        got[label.query_id] = (label.intent, label.source)
    assert got == {
        **{q: (i, "feedback-api") for q, i in singles},
        **{q: (i, "annotation-tool") for q, i in several},
    }
    assert backlog == 0 and dropped == 0


def test_publish_sends_a_file_of_labels_and_dead_letters_the_invalid_ones(kafka, tmp_path):
    """`lambda-ml publish --feedback`: labels from another source (an annotation tool) reach the
    feedback topic keyed by query id; a line that is no label goes to the dead-letter topic with
    a reason naming the field."""
    settings = kafka.fresh_settings(PARTITIONS)
    feedback_topic, dlq = settings.feedback_topic, settings.dlq_topic
    labels = [
        {"query_id": f"q-{i}", "intent": "alarm", "ts": "2026-12-01T10:00:00Z", "tool": "x"}
        for i in range(20)
    ]
    invalid = [
        {"query_id": "q-bad", "ts": "2026-12-01T10:00:00Z"},
        {"query_id": "q-bad", "intent": "", "ts": "2026-12-01T10:00:00Z"},
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in labels + invalid))
    env = stream_jobs_env(settings, tmp_path)
    output = run_to_end(["publish", "--feedback", str(path)], env)
    assert f"sent 20 events to {feedback_topic}" in output

    published = read_all(kafka.bootstrap, feedback_topic, len(labels))
    assert sorted(r.key for r in published) == sorted(f"q-{i}".encode() for i in range(20))
    assert {parse_feedback(r.value).intent for r in published} == {"alarm"}
    dead = read_all(kafka.bootstrap, dlq, len(invalid))
    reasons = sorted(dead_letter_reason(r.headers)["dlq.reason"] for r in dead)
    assert reasons == ["intent: Field required", "intent: String should have at least 1 character"]
    assert read_all(kafka.bootstrap, settings.topic, 0, timeout_s=2) == []


@pytest.fixture
def own_broker(tmp_path) -> Iterator[KafkaLauncher]:
    """A broker of this test's own (it is stopped mid-test), with the pipeline's topics."""
    launcher = throwaway_broker(tmp_path / "kafka", partitions=PARTITIONS)
    with launcher.running():
        yield launcher


class PacedClients:
    """`CLIENTS` threads sending `count` `/predict` requests in all, spread over `seconds`,
    keeping every answer's query id and every failure."""

    def __init__(self, url: str, count: int, seconds: float) -> None:
        self.url, self.count, self.seconds = url, count, seconds
        self.answered: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        threads = [threading.Thread(target=self._send, args=(c,)) for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _send(self, client: int) -> None:
        mine = range(client, self.count, CLIENTS)
        started = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            for n, i in enumerate(mine):
                ahead = started + n * self.seconds / len(mine) - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                try:
                    response = http.post("/predict", json={"text": TEXTS[i % len(TEXTS)]})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.answered.append(response.json()["query_id"])
                else:
                    self.failures.append(f"{response.status_code} {response.text}")


@pytest.mark.reliability
def test_kafka_stopped_under_load_fails_no_answer_and_loses_no_answered_query(
    own_broker: KafkaLauncher, tmp_path, reliability
):
    """Kafka is stopped for 30 s while 2,000 requests are answered: no request fails, the
    answered queries wait in the workers' journals, and once Kafka is back every one of them is
    on the topic."""
    settings = own_broker.settings
    env = {"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap}
    with logging_service(tmp_path, env) as server:
        server.wait_ready(timeout_s=180)
        before = PacedClients(server.url, 200, 2.0)
        before.run()
        wait_until(
            lambda: metric(server.url, "lambda_ml_serving_query_log_sent_total") == 200,
            timeout_s=60,
        )
        own_broker.down()
        stopped_at = time.monotonic()
        during = PacedClients(server.url, OUTAGE_REQUESTS, OUTAGE_S)
        during.run()
        waiting = metric(server.url, "lambda_ml_serving_query_log_backlog")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        down_s = time.monotonic() - stopped_at
        own_broker.up()
        back_at = time.monotonic()
        answered = before.answered + during.answered
        on_topic = read_all(settings.bootstrap, settings.topic, len(answered), timeout_s=120)
        delivered_s = time.monotonic() - back_at
        after = PacedClients(server.url, 200, 2.0)
        after.run()
        answered += after.answered
        dropped = metric(server.url, "lambda_ml_serving_query_log_dropped_total")
    log = server.log_path.read_text() if server.log_path else ""
    ids = [
        parse_event(record.value).query_id
        for record in read_all(settings.bootstrap, settings.topic, len(answered), timeout_s=60)
    ]

    failures = before.failures + during.failures + after.failures
    scenario = "Kafka stopped for 30 s under HTTP load, with the query log on"
    reliability(scenario, "seconds Kafka was down", round(down_s, 1))
    reliability(scenario, "requests answered while Kafka was down", len(during.answered))
    reliability(scenario, "failed requests", len(failures), "= 0")
    reliability(
        scenario, "answered queries waiting in the journals at the end of the load", waiting
    )
    reliability(
        scenario,
        "seconds from Kafka's return to every answered query on the topic",
        round(delivered_s, 1),
    )
    reliability(
        scenario, "answered queries missing from the topic", len(set(answered) - set(ids)), "= 0"
    )
    reliability(scenario, "query ids on the topic more than once", len(ids) - len(set(ids)))
    reliability(scenario, "answered queries dropped", dropped, "= 0")

    assert failures == []
    assert len(during.answered) == OUTAGE_REQUESTS
    assert len(answered) == len(set(answered)) == OUTAGE_REQUESTS + 400
    assert set(ids) == set(answered)  # each answered query on the topic, and nothing else
    assert waiting > 0 and dropped == 0
    assert len(on_topic) >= len(before.answered) + len(during.answered)
    # Each worker that had answers to send said once that Kafka was away, and once that it was
    # back (connections may have brought all the load to one worker).
    away = len(re.findall("Kafka does not take the outbox's messages", log))
    assert 1 <= away <= WORKERS
    assert len(re.findall("Kafka takes the outbox's messages again", log)) == away
