"""The project's own single-node Apache Kafka broker (KRaft mode), without Docker, and the
admin calls the pipeline makes on any cluster (topics, end and committed offsets).

Maven resolves the broker's runtime classpath from Maven Central once (`fetch`), and the broker
runs as a detached JVM (`KafkaLauncher`). With `KAFKA_BOOTSTRAP_SERVERS` set, nothing is
started: `up` only checks the cluster and creates the pipeline's topics there.

A single broker keeps no replicas: an acknowledged write is as durable as this machine's disk.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError, TopicAlreadyExistsError

from common.durable import write_durably
from common.processes import ServiceError
from common.settings import KafkaSettings, LocalBrokerSettings, Settings
from pipelines.services.java import (
    JVM_FLAGS,
    cache_folder,
    fetch_once,
    java_version,
    require_java,
    run_tool,
    write_properties,
)
from pipelines.services.launcher import Launcher

_RESOURCES = Path(__file__).parent / "kafka"
_HOST = "127.0.0.1"
_LOG_CONFIG = f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.properties'}"


class KafkaLauncher(Launcher[KafkaSettings, LocalBrokerSettings]):
    """The local broker, or the cluster at KAFKA_BOOTSTRAP_SERVERS."""

    name = product = "Kafka"
    command, prefix, address_variable = "kafka", "KAFKA_", "KAFKA_BOOTSTRAP_SERVERS"
    client_loggers = ("kafka",)

    def __init__(self, settings: KafkaSettings, local: LocalBrokerSettings) -> None:
        super().__init__(settings, local, settings.bootstrap, local.kafka_version)
        self.libs = cache_folder(local, f"libs-{local.kafka_version}")

    @classmethod
    def of(cls, tree: Settings) -> KafkaLauncher:
        return cls(tree.kafka, tree.local_broker)

    def fetch(self) -> Path:
        """Copy the broker's jars from Maven Central into KAFKA_CACHE_DIR (else KAFKA_HOME),
        once (needs java 17+ and mvn)."""
        goal = ["dependency:copy-dependencies", f"-Dkafka.version={self.version}"]
        return fetch_once(self.libs, f"Kafka {self.version}", goal, _RESOURCES / "pom.xml")

    def ports(self) -> dict[str, int]:
        return {
            "KAFKA_PORT": self.settings.port,
            "KAFKA_CONTROLLER_PORT": self.local.controller_port,
        }

    def start_command(self) -> list[str]:
        libs = self.fetch()
        java = require_java()
        config = _write_server_properties(self.settings, self.local)
        if not (self.local.home.resolve() / "data" / "meta.properties").exists():
            _format_storage(java, libs, config)
        return [
            java,
            f"-Xmx{self.local.heap}",
            *JVM_FLAGS,
            self._class_sharing_flag(java),
            _LOG_CONFIG,
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(config),
        ]

    def answers(self) -> bool:
        """The port accepts connections and a client can list topics (the cheap socket check
        comes first because a failed admin client costs a timeout)."""
        try:
            socket.create_connection((_HOST, self.settings.port), timeout=1.0).close()
            with _admin(self.address, timeout_ms=3_000) as admin:
                admin.list_topics()
        except (OSError, ServiceError):
            return False
        return True

    def prepare(self) -> None:
        """Create the pipeline's topics that are missing."""
        ensure_stream_topics(self.settings, self.settings.partitions)

    def contents(self) -> list[str]:
        return [
            f"{topic}: {count} partition{'s' if count != 1 else ''}"
            for topic, count in topic_partitions(self.address).items()
        ]

    def down(self) -> bool:
        stopped = super().down()
        self._adopt_class_archive()
        return stopped

    def _class_archive(self, java: str) -> Path:
        """The shared AppCDS archive of the broker's classes: it makes the JVM ready sooner.

        Keyed by the Kafka and Java versions, as no other JVM build or classpath can use it.
        """
        return self.libs.parent / f"kafka-{self.version}-java-{java_version(java)}.jsa"

    @property
    def _pending_archive(self) -> Path:
        return self.local.home.resolve() / "classes.jsa"

    def _class_sharing_flag(self, java: str) -> str:
        archive = self._class_archive(java)
        if archive.exists():
            return f"-XX:SharedArchiveFile={archive}"
        # Without one yet, the JVM records the classes it loaded when it exits; `down` adopts
        # them.
        return f"-XX:ArchiveClassesAtExit={self._pending_archive}"

    def _adopt_class_archive(self) -> None:
        """Move a broker's recorded class archive to the shared place, if it is sound.

        A truncated archive (broker killed while writing it) would crash every later JVM, so
        it must first map cleanly with `-Xshare:on`; the move is atomic, as brokers may share
        it.
        """
        pending = self._pending_archive
        if not pending.exists():
            return
        java = require_java()
        archive = self._class_archive(java)
        check = [
            java,
            *JVM_FLAGS,
            "-Xshare:on",
            f"-XX:SharedArchiveFile={pending}",
            "-XX:ErrorFile=/dev/null",
            "-cp",
            f"{self.libs}/*",
            "-version",
        ]
        sound = subprocess.run(check, capture_output=True, cwd=pending.parent).returncode == 0
        if sound and not archive.exists():
            with pending.open("rb") as source:
                write_durably(archive, lambda h: shutil.copyfileobj(source, h))
        pending.unlink()


def topic_partitions(bootstrap: str) -> dict[str, int]:
    """The cluster's non-internal topics and their partition counts."""
    with _admin(bootstrap) as admin:
        described = admin.describe_topics()
    return {
        topic["name"]: len(topic["partitions"])
        for topic in sorted(described, key=lambda topic: topic["name"])
        if not topic.get("is_internal")
    }


def end_offsets(bootstrap: str, topic: str, timeout_ms: int = 10_000) -> dict[int, int]:
    """Each partition of `topic` -> its end offset (the next offset a write gets)."""
    with _admin(bootstrap, timeout_ms) as admin:
        (described,) = admin.describe_topics([topic])
        if described["error_code"] or not described["partitions"]:
            raise ServiceError(f"Kafka at {bootstrap}: no topic {topic!r}")
        specs = {
            TopicPartition(topic, p["partition_index"]): OffsetSpec.LATEST
            for p in described["partitions"]
        }
        found = admin.list_partition_offsets(specs)
    return {tp.partition: found[tp].offset for tp in sorted(found)}


def committed_offsets(
    bootstrap: str, topic: str, timeout_ms: int = 10_000
) -> dict[str, dict[int, int]]:
    """Each consumer group that has committed offsets on `topic` -> partition -> offset."""
    with _admin(bootstrap, timeout_ms) as admin:
        groups = [group["group_id"] for group in admin.list_groups()]
        committed = admin.list_group_offsets(groups) if groups else {}
    return {
        group: {tp.partition: o.offset for tp, o in sorted(offsets.items()) if tp.topic == topic}
        for group, offsets in sorted(committed.items())
        if any(tp.topic == topic for tp in offsets)
    }


def ensure_topics(bootstrap: str, topics: Mapping[str, int]) -> list[str]:
    """Create those of `topics` (name -> partitions) that are missing; returns the created ones.

    Waits until every new partition has a leader, so a producer can write at once. The
    replication factor is the cluster's default (1 on the local broker).
    """
    with _admin(bootstrap) as admin:
        existing = set(admin.list_topics())
        missing = {name: count for name, count in topics.items() if name not in existing}
        if not missing:
            return []
        request = {name: {"num_partitions": count} for name, count in missing.items()}
        try:
            admin.create_topics(request, wait_for_metadata=True)
        except TopicAlreadyExistsError:  # created concurrently by another client
            admin.wait_for_topics(list(missing))
    return sorted(missing)


def ensure_stream_topics(stream: KafkaSettings, partitions: int) -> list[str]:
    """Create the stream's missing topics: its queries and their labels with `partitions`
    partitions each (a label goes to its query's partition), one for dead letters."""
    return ensure_topics(
        stream.bootstrap,
        {stream.topic: partitions, stream.feedback_topic: partitions, stream.dlq_topic: 1},
    )


@contextmanager
def _admin(bootstrap: str, timeout_ms: int = 10_000) -> Iterator[KafkaAdminClient]:
    """An admin client; Kafka errors become ServiceError (an unreachable cluster is expected)."""
    try:
        client = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="lambda-ml-admin",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
        try:
            yield client
        finally:
            client.close()
    except KafkaError as exc:
        raise ServiceError(f"Kafka at {bootstrap}: {exc}") from exc


def _write_server_properties(settings: KafkaSettings, local: LocalBrokerSettings) -> Path:
    """The single combined broker+controller node's configuration, rewritten at every `up`."""
    home = local.home.resolve()
    plaintext = f"{_HOST}:{settings.port}"
    controller = f"{_HOST}:{local.controller_port}"
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{plaintext},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{plaintext}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": controller,
        "log.dirs": str(home / "data"),
        # One broker: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Topics are created explicitly (`up`, `ensure_topics`); a typo must not create one.
        "auto.create.topics.enable": "false",
        # A lone consumer joins its group at once instead of waiting for others.
        "group.initial.rebalance.delay.ms": "0",
    }
    return write_properties(home / "server.properties", properties)


def _format_storage(java: str, libs: Path, config: Path) -> None:
    """Format the empty log dir once, as a standalone KRaft controller of a new cluster."""
    command = [
        java,
        *JVM_FLAGS,
        _LOG_CONFIG,
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _new_cluster_id(),
        "-c",
        str(config),
        "--standalone",
    ]
    run_tool(command, "formatting the Kafka log dir failed:")


def _new_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` prints it, without a JVM start for it.

    That is a random UUID in URL-safe base64 without padding; like Kafka, avoid a leading '-'
    (it would read as a command-line flag).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
