"""One real Kafka broker, MLflow server and S3-compatible store per test session.

Each runs from a throwaway home on ports picked free at start, so a developer's own services
(and their data) are untouched, and each is stopped at the end even when tests fail. Set
KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI or STORAGE_ENDPOINT_URL to run the tests against
existing ones instead. The fixtures start them with the same launchers as `lambda-ml kafka up`.
"""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

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
from pipelines.services.broker import KafkaLauncher, ensure_stream_topics, ensure_topics
from pipelines.services.launcher import Launcher
from pipelines.services.object_store import ObjectStoreLauncher
from pipelines.services.tracking_server import MlflowLauncher

AnyLauncher = TypeVar("AnyLauncher", bound=Launcher[Any, Any])


def throwaway_broker(home: Path, **kafka: object) -> KafkaLauncher:
    """A local broker on free ports in `home`, sharing the usual jar cache (KAFKA_CACHE_DIR or
    KAFKA_HOME), so that it does not fetch the jars again."""
    configured = LocalBrokerSettings()
    port, controller_port = free_ports(2)
    return KafkaLauncher(
        KafkaSettings(bootstrap_servers="", port=port, **kafka),
        LocalBrokerSettings(
            home=home,
            cache_dir=(configured.cache_dir or configured.home).resolve(),
            controller_port=controller_port,
        ),
    )


def throwaway_mlflow(home: Path, **mlflow: object) -> MlflowLauncher:
    """A local MLflow server on a free port, keeping its data in `home`."""
    (port,) = free_ports(1)
    return MlflowLauncher(
        MlflowSettings(tracking_uri="", port=port, **mlflow), LocalMlflowSettings(home=home)
    )


def throwaway_object_store(home: Path) -> ObjectStoreLauncher:
    """A local S3Proxy on a free port in `home`, sharing the usual jar cache (STORAGE_CACHE_DIR
    or STORAGE_HOME), so that it does not fetch the jar again."""
    configured = LocalObjectStoreSettings()
    (port,) = free_ports(1)
    return ObjectStoreLauncher(
        StorageSettings(endpoint_url="", port=port),
        LocalObjectStoreSettings(
            home=home, cache_dir=(configured.cache_dir or configured.home).resolve()
        ),
    )


def _session_launcher(
    configured: AnyLauncher,
    throwaway: Callable[[Path], AnyLauncher],
    tmp_path_factory: pytest.TempPathFactory,
) -> AnyLauncher:
    """The environment's service if it names one; otherwise a local one in a throwaway home."""
    if not configured.uses_local_server:
        return configured
    return throwaway(tmp_path_factory.mktemp(configured.command))


@pytest.fixture(scope="session")
def kafka_launcher(tmp_path_factory: pytest.TempPathFactory) -> KafkaLauncher:
    configured = KafkaLauncher(KafkaSettings(), LocalBrokerSettings())
    return _session_launcher(configured, throwaway_broker, tmp_path_factory)


@pytest.fixture(scope="session")
def kafka_settings(kafka_launcher: KafkaLauncher) -> KafkaSettings:
    return kafka_launcher.settings


@dataclass(frozen=True)
class SessionService(Generic[AnyLauncher]):
    """A service of the test session: its launcher, and the settings its clients use."""

    launcher: AnyLauncher

    @property
    def settings(self) -> Any:
        return self.launcher.settings


class KafkaService(SessionService[KafkaLauncher]):
    """The session's broker: where it is, and fresh topics for one test."""

    @property
    def bootstrap(self) -> str:
        return self.launcher.address

    def new_topic(self, partitions: int = 1) -> str:
        """Create a topic no other test uses, so tests never see each other's messages."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        ensure_topics(self.bootstrap, {name: partitions})
        return name

    def fresh_settings(self, partitions: int = 1) -> KafkaSettings:
        """Settings on a stream no other test uses: its queries and feedback topics with
        `partitions` partitions each (co-partitioned, as `kafka up` makes them) and its
        dead-letter topic."""
        settings = self.settings.on_topic(f"test-{uuid.uuid4().hex[:12]}")
        ensure_stream_topics(settings, partitions)
        return settings


@pytest.fixture(scope="session")
def kafka(kafka_launcher: KafkaLauncher) -> Iterator[KafkaService]:
    with kafka_launcher.running():
        yield KafkaService(kafka_launcher)


@pytest.fixture(scope="session")
def mlflow_launcher(tmp_path_factory: pytest.TempPathFactory) -> MlflowLauncher:
    configured = MlflowLauncher(MlflowSettings(), LocalMlflowSettings())
    return _session_launcher(configured, throwaway_mlflow, tmp_path_factory)


@pytest.fixture(scope="session")
def mlflow_settings(mlflow_launcher: MlflowLauncher) -> MlflowSettings:
    return mlflow_launcher.settings


@pytest.fixture(scope="session")
def mlflow_server(mlflow_launcher: MlflowLauncher) -> Iterator[str]:
    """The tracking URI of the session's MLflow server."""
    with mlflow_launcher.running():
        yield mlflow_launcher.address


class ObjectStoreService(SessionService[ObjectStoreLauncher]):
    """The session's S3-compatible store, and fresh prefixes on it."""

    def new_url(self, name: str = "test") -> str:
        """An `s3://` prefix no other test uses."""
        return f"s3://{self.settings.bucket}/{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStoreService]:
    configured = ObjectStoreLauncher(StorageSettings(), LocalObjectStoreSettings())
    launcher = _session_launcher(configured, throwaway_object_store, tmp_path_factory)
    with launcher.running():
        yield ObjectStoreService(launcher)
