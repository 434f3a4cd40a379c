"""The project's own single-node Apache Kafka broker (KRaft mode), without Docker.

Maven resolves the broker's runtime classpath from Maven Central once (`fetch`), and the broker
runs as a detached JVM tracked by `DetachedService` (`up`, `down`, `status`). With
`KAFKA_BOOTSTRAP_SERVERS` set, nothing is started: `up` only checks the cluster and its topics.

A single broker keeps no replicas: an acknowledged write is as durable as this machine's disk.
"""

from __future__ import annotations

import base64
import functools
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError, TopicAlreadyExistsError

from common.durable import write_durably
from common.processes import DetachedService, ServiceError, port_is_free
from common.settings import KafkaSettings, LocalBrokerSettings

_RESOURCES = Path(__file__).parent / "kafka"
_HOST = "127.0.0.1"
# The C1-only JIT and the serial GC make the broker ready sooner on a small machine, and
# throughput is unchanged because Python clients are the bottleneck.
_JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_INSTALL_HINT = {"java": "openjdk-17-jre-headless", "mvn": "maven"}


@dataclass(frozen=True)
class BrokerStatus:
    """What `status` reports; `pid` and `log_file` are None for an external cluster."""

    bootstrap: str
    running: bool
    pid: int | None
    log_file: Path | None
    topics: dict[str, int]


def libs_dir(local: LocalBrokerSettings) -> Path:
    """Where the jars of `local.kafka_version` are kept (shared by every Kafka home)."""
    return (local.cache_dir or local.home).resolve() / f"libs-{local.kafka_version}"


def fetch(local: LocalBrokerSettings) -> Path:
    """Copy the broker's runtime classpath from Maven into `libs_dir`, once; returns that dir.

    A marker file written last makes an interrupted fetch start over instead of leaving a
    broker with missing jars; the lock lets concurrent fetches (tests, CLI) share one download.
    """
    libs = libs_dir(local)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    _require_tools(maven=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(libs.parent / ".fetch.lock"):
        if marker.exists():
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        # Maven runs on a copy of the pom so the repository stays clean.
        pom = libs.parent / "pom.xml"
        shutil.copyfile(_RESOURCES / "pom.xml", pom)
        command = [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-Dkafka.version={local.kafka_version}",
            f"-DoutputDirectory={libs}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ServiceError(f"Maven could not fetch Kafka {local.kafka_version}:", tail)
        marker.write_text(f"{local.kafka_version}\n")
    return libs


def up(settings: KafkaSettings, local: LocalBrokerSettings, timeout: float = 90.0) -> bool:
    """Start the local broker and create the pipeline's topics; True if this call started it.

    Already running, or an external cluster configured: nothing is started, but missing
    topics are still created (a new KAFKA_TOPIC needs only another `up`).
    """
    topics = {settings.topic: settings.partitions, settings.dlq_topic: 1}
    if not settings.uses_local_broker or _process(local).is_running():
        ensure_topics(settings.bootstrap, topics)
        return False
    process = _process(local)
    libs = fetch(local)
    java = _require_tools(maven=False)
    busy = [port for port in (settings.port, local.controller_port) if not port_is_free(port)]
    if busy:
        raise ServiceError(
            f"port {', '.join(map(str, busy))} on {_HOST} is already in use; "
            "stop what listens there or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
        )
    config = _write_server_properties(settings, local)
    if not (_data_dir(local) / "meta.properties").exists():
        _format_storage(java, libs, config)
    process.start(
        [
            java,
            f"-Xmx{local.heap}",
            *_JVM_FLAGS,
            _class_sharing_flag(local, java),
            f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(config),
        ]
    )
    try:
        process.wait_ready(lambda: _answers(settings), timeout)
        ensure_topics(settings.bootstrap, topics)
    except BaseException:
        process.stop()
        raise
    return True


def down(settings: KafkaSettings, local: LocalBrokerSettings) -> bool:
    """Stop the local broker; False if it was not running (or the cluster is external)."""
    if not settings.uses_local_broker:
        return False
    stopped = _process(local).stop()
    _adopt_class_archive(local)
    return stopped


def status(settings: KafkaSettings, local: LocalBrokerSettings) -> BrokerStatus:
    """Whether the broker runs, where, and its topics with their partition counts."""
    if settings.uses_local_broker:
        process = _process(local)
        pid, log_file = process.pid(), process.log_file
        running = pid is not None
    else:
        pid, log_file, running = None, None, True
    topics: dict[str, int] = {}
    if running:
        try:
            topics = topic_partitions(settings.bootstrap)
        except ServiceError:
            running = settings.uses_local_broker  # a local broker may still be starting
    return BrokerStatus(settings.bootstrap, running, pid, log_file, topics)


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


def _process(local: LocalBrokerSettings) -> DetachedService:
    return DetachedService("kafka", local.home.resolve())


def _data_dir(local: LocalBrokerSettings) -> Path:
    return local.home.resolve() / "data"


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


def _answers(settings: KafkaSettings) -> bool:
    """Readiness: the port accepts connections and a client can list topics.

    The cheap socket check comes first because a failed admin client costs a timeout.
    """
    try:
        socket.create_connection((_HOST, settings.port), timeout=1.0).close()
        with _admin(settings.bootstrap, timeout_ms=3_000) as admin:
            admin.list_topics()
    except (OSError, ServiceError):
        return False
    return True


def _require_tools(maven: bool) -> str:
    """The path of a Java 17+ `java` (and check `mvn` if `maven`), or a clear error."""
    problems: dict[str, str] = {}
    java = shutil.which("java")
    if java is None:
        problems["java"] = "java not found (Kafka 4 needs Java 17+)"
    elif _major(version := _java_version(java)) < 17:
        problems["java"] = f"java {version} found, Kafka 4 needs Java 17+"
    if maven and shutil.which("mvn") is None:
        problems["mvn"] = "mvn not found (Maven fetches the Kafka jars)"
    if problems or java is None:
        packages = " ".join(_INSTALL_HINT[tool] for tool in problems)
        raise ServiceError(
            f"{'; '.join(problems.values())}; install with: sudo apt-get install {packages}"
        )
    return java


@functools.cache
def _java_version(java: str) -> str:
    """The version `java -version` reports, e.g. "17.0.15" (or "1.8.0_402" on Java 8)."""
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "([^"]+)"', output)
    return found.group(1) if found else "0"


def _major(version: str) -> int:
    """17 for "17.0.15", 8 for the old scheme "1.8.0_402"."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:2]] + [0]
    return parts[1] if parts[0] == 1 else parts[0]


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
        "log.dirs": str(_data_dir(local)),
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
    path = home / "server.properties"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def _format_storage(java: str, libs: Path, config: Path) -> None:
    """Format the empty log dir once, as a standalone KRaft controller of a new cluster."""
    command = [
        java,
        *_JVM_FLAGS,
        f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.properties'}",
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
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ServiceError("formatting the Kafka log dir failed:", tail)


def _class_archive(local: LocalBrokerSettings, java: str) -> Path:
    """The shared AppCDS archive of the broker's classes: it makes the JVM ready sooner.

    Keyed by the Kafka and Java versions, as no other JVM build or classpath can use it.
    """
    name = f"kafka-{local.kafka_version}-java-{_java_version(java)}.jsa"
    return libs_dir(local).parent / name


def _pending_archive(local: LocalBrokerSettings) -> Path:
    return local.home.resolve() / "classes.jsa"


def _class_sharing_flag(local: LocalBrokerSettings, java: str) -> str:
    archive = _class_archive(local, java)
    if archive.exists():
        return f"-XX:SharedArchiveFile={archive}"
    # Without one yet, the JVM records the classes it loaded when it exits; `down` adopts them.
    return f"-XX:ArchiveClassesAtExit={_pending_archive(local)}"


def _adopt_class_archive(local: LocalBrokerSettings) -> None:
    """Move a broker's recorded class archive to the shared place, if it is sound.

    A truncated archive (broker killed while writing it) would crash every later JVM, so it
    must first map cleanly with `-Xshare:on`; the move is atomic, as brokers may share it.
    """
    pending = _pending_archive(local)
    if not pending.exists():
        return
    java = _require_tools(maven=False)
    archive = _class_archive(local, java)
    check = [
        java,
        *_JVM_FLAGS,
        "-Xshare:on",
        f"-XX:SharedArchiveFile={pending}",
        "-XX:ErrorFile=/dev/null",
        "-cp",
        f"{libs_dir(local)}/*",
        "-version",
    ]
    sound = subprocess.run(check, capture_output=True, cwd=pending.parent).returncode == 0
    if sound and not archive.exists():
        with pending.open("rb") as source:
            write_durably(archive, lambda h: shutil.copyfileobj(source, h))
    pending.unlink()


def _new_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` prints it, without a JVM start for it.

    That is a random UUID in URL-safe base64 without padding; like Kafka, avoid a leading '-'
    (it would read as a command-line flag).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
