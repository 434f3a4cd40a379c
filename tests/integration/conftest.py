"""One real Kafka broker and one real MLflow server per test session.

Each runs from a throwaway home on ports picked free at start, so a developer's own services
(and their data) are untouched, and each is stopped at the end even when tests fail. Set
KAFKA_BOOTSTRAP_SERVERS or MLFLOW_TRACKING_URI to run the tests against existing ones instead.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.processes import free_ports
from common.settings import (
    KafkaSettings,
    LocalBrokerSettings,
    LocalMlflowSettings,
    LocalObjectStoreSettings,
    MlflowSettings,
    StorageSettings,
)
from pipelines.services import broker, tracking_server


@dataclass(frozen=True)
class KafkaService:
    """The session's broker: where it is, and a factory of fresh topics for one test."""

    bootstrap: str
    settings: KafkaSettings
    local: LocalBrokerSettings

    def new_topic(self, partitions: int = 1) -> str:
        """Create a topic no other test uses, so tests never see each other's messages."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        broker.ensure_topics(self.bootstrap, {name: partitions})
        return name


def throwaway_broker(home: Path, **kafka: object) -> tuple[KafkaSettings, LocalBrokerSettings]:
    """Settings of a local broker on free ports in `home`, sharing the usual jar cache
    (KAFKA_CACHE_DIR or KAFKA_HOME), so that it does not fetch the jars again."""
    configured = LocalBrokerSettings()
    port, controller_port = free_ports(2)
    return KafkaSettings(bootstrap_servers="", port=port, **kafka), LocalBrokerSettings(
        home=home,
        cache_dir=(configured.cache_dir or configured.home).resolve(),
        controller_port=controller_port,
    )


@pytest.fixture(scope="session")
def kafka_launch(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[KafkaSettings, LocalBrokerSettings]:
    """The environment's cluster if set; otherwise a local broker in a throwaway home."""
    configured = KafkaSettings()
    if not configured.uses_local_broker:
        return configured, LocalBrokerSettings()
    return throwaway_broker(tmp_path_factory.mktemp("kafka"))


@pytest.fixture(scope="session")
def kafka_settings(kafka_launch: tuple[KafkaSettings, LocalBrokerSettings]) -> KafkaSettings:
    return kafka_launch[0]


@pytest.fixture(scope="session")
def kafka(kafka_launch: tuple[KafkaSettings, LocalBrokerSettings]) -> Iterator[KafkaService]:
    settings, local = kafka_launch
    broker.up(settings, local)
    try:
        yield KafkaService(settings.bootstrap, settings, local)
    finally:
        broker.down(settings, local)


def throwaway_mlflow(home: Path, **mlflow: object) -> tuple[MlflowSettings, LocalMlflowSettings]:
    """Settings of a local MLflow server on a free port, keeping its data in `home`."""
    (port,) = free_ports(1)
    return MlflowSettings(tracking_uri="", port=port, **mlflow), LocalMlflowSettings(home=home)


@pytest.fixture(scope="session")
def mlflow_launch(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[MlflowSettings, LocalMlflowSettings]:
    """The environment's server if set; otherwise a local one in a throwaway home."""
    configured = MlflowSettings()
    if not configured.uses_local_server:
        return configured, LocalMlflowSettings()
    return throwaway_mlflow(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="session")
def mlflow_settings(mlflow_launch: tuple[MlflowSettings, LocalMlflowSettings]) -> MlflowSettings:
    return mlflow_launch[0]


@pytest.fixture(scope="session")
def mlflow_server(mlflow_launch: tuple[MlflowSettings, LocalMlflowSettings]) -> Iterator[str]:
    """The tracking URI of the session's MLflow server."""
    tracking_server.up(*mlflow_launch)
    try:
        yield mlflow_launch[0].uri
    finally:
        tracking_server.down(*mlflow_launch)


@dataclass(frozen=True)
class ObjectStoreService:
    """The session's S3-compatible store: its settings, the launcher's, and fresh prefixes."""

    settings: StorageSettings
    local: LocalObjectStoreSettings

    def new_url(self, name: str = "test") -> str:
        """An `s3://` prefix no other test uses."""
        return f"s3://{self.settings.bucket}/{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStoreService]:
    """The environment's store if STORAGE_ENDPOINT_URL is set; otherwise the project's S3Proxy
    on a free port in a throwaway home, sharing the usual jar cache (STORAGE_CACHE_DIR or
    STORAGE_HOME), so that it does not fetch the jar again."""
    from pipelines.services import object_store as launcher

    configured, configured_local = StorageSettings(), LocalObjectStoreSettings()
    if configured.uses_local_server:
        (port,) = free_ports(1)
        settings = StorageSettings(endpoint_url="", port=port)
        local = LocalObjectStoreSettings(
            home=tmp_path_factory.mktemp("s3proxy"),
            cache_dir=(configured_local.cache_dir or configured_local.home).resolve(),
        )
    else:
        settings, local = configured, configured_local
    launcher.up(settings, local)
    try:
        yield ObjectStoreService(settings, local)
    finally:
        launcher.down(settings, local)
