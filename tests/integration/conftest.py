"""One real Kafka broker and one real MLflow server per test session.

Each runs from a throwaway home on ports picked free at start, so a developer's own services
(and their data) are untouched, and each is stopped at the end even when tests fail. Set
KAFKA_BOOTSTRAP_SERVERS or MLFLOW_TRACKING_URI to run the tests against existing ones instead.
"""

import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from pipelines import tracking_server
from pipelines.config import MlflowSettings
from streams import broker
from streams.config import KafkaSettings


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the OS picks them; all held open together, so distinct)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass(frozen=True)
class KafkaService:
    """The session's broker: where it is, and a factory of fresh topics for one test."""

    bootstrap: str
    settings: KafkaSettings

    def new_topic(self, partitions: int = 1) -> str:
        """Create a topic no other test uses, so tests never see each other's messages."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        broker.ensure_topics(self.bootstrap, {name: partitions})
        return name


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> KafkaSettings:
    """The environment's cluster if set; otherwise a local broker in a throwaway home.

    The jars come from the usual cache (KAFKA_HOME), so a session does not fetch them again.
    """
    configured = KafkaSettings()
    if not configured.uses_local_broker:
        return configured
    port, controller_port = free_ports(2)
    return KafkaSettings(
        home=tmp_path_factory.mktemp("kafka"),
        cache_dir=(configured.cache_dir or configured.home).resolve(),
        port=port,
        controller_port=controller_port,
    )


@pytest.fixture(scope="session")
def kafka(kafka_settings: KafkaSettings) -> Iterator[KafkaService]:
    broker.up(kafka_settings)
    try:
        yield KafkaService(kafka_settings.bootstrap, kafka_settings)
    finally:
        broker.down(kafka_settings)


@pytest.fixture(scope="session")
def mlflow_settings(tmp_path_factory: pytest.TempPathFactory) -> MlflowSettings:
    """The environment's server if set; otherwise a local one in a throwaway home."""
    configured = MlflowSettings()
    if not configured.uses_local_server:
        return configured
    (port,) = free_ports(1)
    return MlflowSettings(home=tmp_path_factory.mktemp("mlflow"), port=port)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_settings: MlflowSettings) -> Iterator[str]:
    """The tracking URI of the session's MLflow server."""
    tracking_server.up(mlflow_settings)
    try:
        yield mlflow_settings.uri
    finally:
        tracking_server.down(mlflow_settings)
