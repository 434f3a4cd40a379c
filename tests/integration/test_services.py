"""The real local services: the broker carries messages, `up` is idempotent, `status` tells the
truth, and the MLflow server stores runs and artifacts that clients read back through it."""

import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.services.broker import ensure_topics, topic_partitions
from pipelines.services.tracking_server import is_healthy

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

    assert topic_partitions(kafka.bootstrap)[topic] == 3
    assert ensure_topics(kafka.bootstrap, {topic: 3}) == []


def test_broker_up_twice_is_a_no_op(kafka):
    before = kafka.launcher.status()

    assert kafka.launcher.up() is False
    assert kafka.launcher.status().pid == before.pid


def test_broker_status_reports_running_with_the_pipeline_topics(kafka):
    state = kafka.launcher.status()

    assert state.running and state.address == kafka.bootstrap
    if kafka.settings.uses_local_server:
        assert state.pid is not None and state.log_file is not None
    assert f"{kafka.settings.topic}: {kafka.settings.partitions} partitions" in state.contents
    assert f"{kafka.settings.dlq_topic}: 1 partition" in state.contents


def test_kafka_up_on_a_configured_cluster_creates_the_topics_and_lists_them(kafka):
    topic = f"cli-{uuid.uuid4().hex[:12]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_PARTITIONS": "2",
    }

    result = CliRunner().invoke(app, ["kafka", "up"], env=env)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Kafka at {kafka.bootstrap}, as KAFKA_BOOTSTRAP_SERVERS says"
    assert {f"  {topic}: 2 partitions", f"  {topic}.dlq: 1 partition"} <= set(lines)
    assert topic_partitions(kafka.bootstrap)[topic] == 2


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


def test_mlflow_up_twice_is_a_no_op(mlflow_server: str, mlflow_launcher):
    before = mlflow_launcher.status()

    assert mlflow_launcher.up() is False
    state = mlflow_launcher.status()
    assert state.running and state.pid == before.pid and state.address == mlflow_server
    assert is_healthy(mlflow_server)
