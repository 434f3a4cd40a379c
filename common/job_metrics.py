"""A long-running job's metrics and liveness, on one HTTP port of its own.

`/metrics` answers in Prometheus' text format from the job's own `CollectorRegistry`: figures the
job's loop already keeps, read when Prometheus scrapes (`FiguresCollector`), plus the process's
CPU and memory. `/healthz` answers 200 while the loop's last `Heartbeat` is recent, and 503 with
the reason once it is not: a job whose loop is stuck (a write that never returns, a lock that is
never released) still has a process and an HTTP server, and only the heartbeat tells.

The server runs on a daemon thread and never touches what the loop owns (a Kafka consumer is
not thread-safe): a collector reads plain attributes the loop writes.
"""

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Heartbeat:
    """When a job's loop last turned, and whether that is too long ago.

    The loop calls `beat` once a turn. Before a step known to take longer than a turn (a
    retrain), it says so with `within_s`, and the bound holds until the next beat.

    Parameters
    ----------
    stall_s
        How long a turn may take before the loop counts as stalled.
    clock
        Monotonic seconds; tests pass their own.
    """

    def __init__(self, stall_s: float, clock: Clock = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        # One tuple, replaced whole: the HTTP thread reads it while the loop writes it.
        self._last = (clock(), stall_s, "the loop")

    def beat(self, within_s: float | None = None, doing: str = "the loop") -> None:
        """The loop is alive now; the next beat is due within `within_s` (default `stall_s`),
        while it is busy `doing` that."""
        self._last = (self.clock(), within_s or self.stall_s, doing)

    @property
    def age_s(self) -> float:
        """Seconds since the last beat."""
        return self.clock() - self._last[0]

    def stalled(self) -> str | None:
        """Why the loop counts as stalled, or None while it does not."""
        at, bound_s, doing = self._last
        age = self.clock() - at
        if age <= bound_s:
            return None
        return f"no heartbeat from {doing} for {age:.1f}s, over its bound of {bound_s:g}s"


@dataclass(frozen=True)
class Family:
    """One metric a collector exposes: its full name (a counter's without `_total`), its help
    line, its type and the names of its labels."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()


Sample = tuple[str, tuple[str, ...], float]
"""A family's name, the values of its labels (in the family's order) and the value."""


class FiguresCollector(Collector):
    """The families `families`, filled at each scrape from `read()`'s samples.

    A sample of an undeclared family is an error, so a renamed figure fails the scrape (and
    the tests) instead of vanishing. A family without samples is left out.
    """

    def __init__(self, families: Iterable[Family], read: Callable[[], Iterable[Sample]]) -> None:
        self.families = {family.name: family for family in families}
        self.read = read

    def collect(self) -> Iterator[Metric]:
        built: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, labels, value in self.read():
            if name not in built:
                family = self.families[name]
                kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
                built[name] = kind(name, family.help, labels=family.labels)
            built[name].add_metric(list(labels), value)
        yield from built.values()


class MetricsPortInUse(RuntimeError):
    """The job's metrics port is taken by another process."""


class JobEndpoint:
    """`/metrics` and `/healthz` of one job, served on a daemon thread; `register` adds the
    job's collectors once the objects they read exist.

    Parameters
    ----------
    job
        The job's name, in its metric names (`lambda_ml_<job>_...`) and its messages.
    host, port
        Where to listen; port 0 serves nothing (`heartbeat` still works).
    heartbeat
        The loop's heartbeat, which `/healthz` judges.
    port_setting
        The setting that chose the port, named when the port is taken.

    Raises
    ------
    MetricsPortInUse
        Another process listens on `port`.
    """

    def __init__(
        self, job: str, host: str, port: int, heartbeat: Heartbeat, port_setting: str
    ) -> None:
        self.job = job
        self.heartbeat = heartbeat
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        age = f"lambda_ml_{job}_heartbeat_age_seconds"
        self.register(
            FiguresCollector(
                [Family(age, "Seconds since the loop's last heartbeat")],
                lambda: [(age, (), heartbeat.age_s)],
            )
        )
        self._server: ThreadingHTTPServer | None = None
        if port:
            try:
                self._server = ThreadingHTTPServer((host, port), _handler(self))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise MetricsPortInUse(
                    f"{job}: cannot serve /metrics and /healthz on {host}:{port}, another "
                    f"process listens there; set {port_setting} to a free port (0: none)"
                ) from None
            self._server.daemon_threads = True
            threading.Thread(
                target=self._server.serve_forever, name=f"{job}-metrics", daemon=True
            ).start()
            log.info("%s: /metrics and /healthz on http://%s:%s", job, host, self.port)

    @property
    def port(self) -> int | None:
        """The port served, or None when there is no endpoint."""
        return self._server.server_address[1] if self._server is not None else None

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def health(self) -> tuple[HTTPStatus, str]:
        problem = self.heartbeat.stalled()
        if problem is None:
            return HTTPStatus.OK, f"{self.job}: alive\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, f"{self.job}: stalled: {problem}\n"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler(endpoint: JobEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, body, content_type = (
                    HTTPStatus.OK,
                    generate_latest(endpoint.registry),
                    CONTENT_TYPE_LATEST,
                )
            elif path == "/healthz":
                status, text = endpoint.health()
                body, content_type = text.encode(), "text/plain; charset=utf-8"
            else:
                status, body = HTTPStatus.NOT_FOUND, b"/metrics or /healthz\n"
                content_type = "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    return Handler
