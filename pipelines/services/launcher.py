"""The one shape of a local service the pipeline runs on: Kafka, S3Proxy and MLflow.

A launcher pairs the service's connection settings (where clients find it) with its local
settings (how this machine runs it). When the connection settings name a service elsewhere
(`uses_local_server` is False), nothing is started or stopped: `up` only checks that service
and prepares it (topics, bucket). A local one runs as a detached process tracked by
`DetachedService`, so any later command can find it, report on it and stop it.

Subclasses say how to fetch, start, probe and prepare theirs (`fetch`, `start_command`,
`answers`, `prepare`, `contents`); `up`, `down`, `status` and `running` are the same for all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from common.processes import DetachedService, ServiceError, port_is_free
from common.settings import Settings


class Connection(Protocol):
    """What a launcher reads of its service's connection settings."""

    @property
    def port(self) -> int: ...

    @property
    def uses_local_server(self) -> bool: ...


class LocalRun(Protocol):
    """What a launcher reads of the settings that say how this machine runs the service."""

    @property
    def home(self) -> Path: ...


C = TypeVar("C", bound=Connection)
L = TypeVar("L", bound=LocalRun)


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` reports: `pid` and `log_file` are None for a service run elsewhere;
    `contents` are lines on what it holds (topics, buckets)."""

    address: str
    running: bool
    pid: int | None
    log_file: Path | None
    contents: tuple[str, ...] = ()


class Launcher(ABC, Generic[C, L]):
    """A service this machine can run for the pipeline, or one configured elsewhere.

    The docstrings of `fetch` and `prepare` are also the help of `lambda-ml <command> fetch`
    and `up`: they say what each does for this service.
    """

    name: ClassVar[str]  # for people: "Kafka", "MLflow", "Object store"
    product: ClassVar[str]  # what runs locally: "Kafka", "MLflow", "S3Proxy"
    command: ClassVar[str]  # its `lambda-ml` command group: "kafka", "mlflow", "s3"
    prefix: ClassVar[str]  # of its settings' environment variables: "KAFKA_"
    address_variable: ClassVar[str]  # the setting that points elsewhere
    start_timeout_s: ClassVar[float] = 90.0
    # Client libraries that log every refused connection, which commands report themselves.
    client_loggers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: C, local: L, address: str, version: str) -> None:
        """`address` is where clients find the service; `version` that of the local one."""
        self.settings = settings
        self.local = local
        self.address = address
        self.version = version

    @classmethod
    @abstractmethod
    def of(cls, tree: Settings) -> Self:
        """The launcher of this service in the settings tree."""

    @abstractmethod
    def fetch(self) -> Path:
        """Get what the local service needs to run, once; returns where it is."""

    @abstractmethod
    def start_command(self) -> list[str]:
        """The local service's command line, with its configuration written (after `fetch`)."""

    @abstractmethod
    def answers(self) -> bool:
        """Whether the service answers its clients now (the readiness probe)."""

    def prepare(self) -> None:
        """Check that it answers its clients."""
        if not self.answers():
            raise ServiceError(f"{self.name} at {self.address} does not answer")

    def contents(self) -> list[str]:
        """Lines on what the service holds, for `status`; a ServiceError if unreachable."""
        self.prepare()
        return []

    def ports(self) -> dict[str, int]:
        """The ports the local service listens on, by the setting that moves each."""
        return {f"{self.prefix}PORT": self.settings.port}

    def environment(self) -> Mapping[str, str] | None:
        """The local service's whole environment (None: this process's)."""
        return None

    @property
    def uses_local_server(self) -> bool:
        return self.settings.uses_local_server

    @property
    def label(self) -> str:
        return f"{self.product} {self.version}"

    @property
    def process(self) -> DetachedService:
        return DetachedService(self.product.lower(), self.local.home.resolve())

    def up(self, timeout_s: float | None = None) -> bool:
        """Start the local service and prepare it; True if this call started it.

        Already running, or run elsewhere: nothing is started, but it is still prepared
        (a new topic or bucket needs only another `up`).
        """
        process = self.process
        if not self.uses_local_server or process.is_running():
            self.prepare()
            return False
        busy = {name: port for name, port in self.ports().items() if not port_is_free(port)}
        if busy:
            raise ServiceError(
                f"port {', '.join(map(str, busy.values()))} on 127.0.0.1 is already in use; "
                f"stop what listens there or set {' / '.join(busy)}"
            )
        process.start(self.start_command(), self.environment())
        try:
            process.wait_ready(self.answers, timeout_s or self.start_timeout_s)
            self.prepare()
        except BaseException:
            process.stop()
            raise
        return True

    def down(self) -> bool:
        """Stop the local service (its data stays); False if it was not running or is run
        elsewhere."""
        return self.uses_local_server and self.process.stop()

    def status(self) -> ServiceStatus:
        """Whether the service runs, where, and what it holds."""
        pid, log_file, running = None, None, True
        if self.uses_local_server:
            local = self.process.status()
            pid, log_file, running = local.pid, local.log_file, local.running
        contents: list[str] = []
        if running:
            try:
                contents = self.contents()
            except ServiceError:
                running = self.uses_local_server  # a local service may still be starting
        return ServiceStatus(self.address, running, pid, log_file, tuple(contents))

    @contextmanager
    def running(self) -> Iterator[bool]:
        """The service up for a `with` block, stopped after it only if this started it;
        yields whether it did."""
        started = self.up()
        try:
            yield started
        finally:
            if started:
                self.down()
