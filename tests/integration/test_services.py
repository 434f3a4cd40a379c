"""The real local services: the broker carries messages, `up` is idempotent, `status` tells the
truth, and the MLflow server stores runs and artifacts that clients read back through it."""

from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from mlflow import MlflowClient

from pipelines.services import broker, tracking_server

pytestmark = pytest.mark.integration


def test_broker_round_trip_on_a_fresh_topic(kafka):
    topic = kafka.new_topic(partitions=2)
    sent = [(f"user-{n % 3}".encode(), f"query {n}".encode()) for n in range(30)]

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    received = []
    for message in consumer:  # stops early only if messages are missing
        received.append((message.key, message.value))
        if len(received) == len(sent):
            break
    consumer.close()

    assert sorted(received) == sorted(sent)
    for key in {key for key, _ in sent}:  # one key, one partition: order is kept
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


def test_new_topics_have_the_requested_partitions(kafka):
    topic = kafka.new_topic(partitions=3)

    assert broker.topic_partitions(kafka.bootstrap)[topic] == 3
    assert broker.ensure_topics(kafka.bootstrap, {topic: 3}) == []


def test_broker_up_twice_is_a_no_op(kafka):
    before = broker.status(kafka.settings, kafka.local)

    assert broker.up(kafka.settings, kafka.local) is False
    assert broker.status(kafka.settings, kafka.local).pid == before.pid


def test_broker_status_reports_running_with_the_pipeline_topics(kafka):
    state = broker.status(kafka.settings, kafka.local)

    assert state.running and state.bootstrap == kafka.bootstrap
    if kafka.settings.uses_local_broker:
        assert state.pid is not None and state.log_file is not None
    assert state.topics[kafka.settings.topic] == kafka.settings.partitions
    assert kafka.settings.dlq_topic in state.topics


def test_mlflow_server_stores_a_run_and_its_artifact(mlflow_server: str, tmp_path: Path):
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"services-test-{tmp_path.name}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "alpha", "0.5")
    client.log_metric(run_id, "accuracy", 0.93)
    report = tmp_path / "report.txt"
    report.write_text("holdout accuracy 0.93\n")
    client.log_artifact(run_id, str(report), artifact_path="reports")
    client.set_terminated(run_id)

    run = MlflowClient(tracking_uri=mlflow_server).get_run(run_id)
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.metrics == {"accuracy": 0.93}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    downloaded = client.download_artifacts(run_id, "reports/report.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == "holdout accuracy 0.93\n"


def test_mlflow_up_twice_is_a_no_op(mlflow_server: str, mlflow_launch):
    before = tracking_server.status(*mlflow_launch)

    assert tracking_server.up(*mlflow_launch) is False
    state = tracking_server.status(*mlflow_launch)
    assert state.running and state.pid == before.pid and state.uri == mlflow_server
    assert tracking_server.is_healthy(mlflow_server)
