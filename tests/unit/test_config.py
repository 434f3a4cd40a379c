"""Settings come from the environment with the documented prefixes and defaults."""

import os

import pytest

from common.settings import KafkaSettings, MlflowSettings


def test_kafka_defaults_to_a_local_broker(monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = KafkaSettings()
    assert settings.uses_local_server
    assert settings.bootstrap == f"localhost:{settings.port}"


def test_kafka_environment_points_at_an_existing_cluster(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("KAFKA_PARTITIONS", "12")
    settings = KafkaSettings()
    assert not settings.uses_local_server
    assert settings.bootstrap == "broker-a:9092,broker-b:9092"
    assert settings.partitions == 12


def test_mlflow_environment_points_at_an_existing_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    settings = MlflowSettings()
    assert not settings.uses_local_server and settings.uri == "http://mlflow.internal:5000"


def test_settings_are_frozen_and_typed(monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        KafkaSettings()
    monkeypatch.delenv("KAFKA_PORT")
    with pytest.raises(ValueError):
        KafkaSettings().port = 1  # type: ignore[misc]


def test_a_fluent_mlflow_block_leaves_the_environment_as_it_was(monkeypatch):
    from models.registry import fluent_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry.example:5000")
    with fluent_mlflow("http://127.0.0.1:5999"):
        assert MlflowSettings().uri == "http://127.0.0.1:5999"
    assert MlflowSettings().uses_local_server
    assert os.environ["MLFLOW_REGISTRY_URI"] == "http://registry.example:5000"
