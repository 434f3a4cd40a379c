"""`lambda-ml kafka|mlflow|s3 ...`: the local services the pipeline runs on.

Settings come from the tree read once at the CLI edge (`pipelines.cli.edge`). Expected failures (a
missing tool, a busy port, a server that died at start-up) print one red line, plus the end of
the service's log when there is one, and exit with status 1 instead of a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from common.processes import ServiceError
from pipelines.cli.edge import settings as edge_settings
from pipelines.services import broker, object_store, tracking_server

kafka_app = typer.Typer(
    help="The Kafka broker: the project's own single-node broker, or KAFKA_BOOTSTRAP_SERVERS.",
    no_args_is_help=True,
)
mlflow_app = typer.Typer(
    help="The MLflow tracking server: the project's own, or MLFLOW_TRACKING_URI.",
    no_args_is_help=True,
)
s3_app = typer.Typer(
    help="The S3-compatible object store: the project's own S3Proxy, or STORAGE_ENDPOINT_URL.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


@contextmanager
def _expected_failures() -> Iterator[None]:
    try:
        yield
    except ServiceError as exc:
        errors.print(f"[red]error:[/red] {escape(exc.message)}")
        if exc.log_tail:
            errors.print(exc.log_tail, markup=False, highlight=False)
        raise typer.Exit(1) from None


def _report_up(
    name: str, address: str, local: bool, seconds: float, started: tuple | None, external: str
) -> None:
    """One line on what `up` did: `started` is (pid, log file) when this call started the
    local service; `external` is the line for a service run elsewhere."""
    if started is not None:
        pid, log_file = started
        console.print(f"{name} up at {address} (pid {pid}) in {seconds:.1f}s; log: {log_file}")
    elif local:
        console.print(f"{name} is already running at {address}")
    else:
        console.print(external)


def _report_down(name: str, address: str, local: bool, stopped: bool) -> None:
    if stopped:
        console.print(f"{name} stopped")
    elif local:
        console.print(f"{name} was not running")
    else:
        console.print(f"{name} at {address} is not ours to stop")


def _quiet_kafka_client() -> None:
    """The Kafka client logs every refused connection; these commands report the outcome."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Download the broker's jars from Maven Central into KAFKA_HOME, once.

    Needs java 17+ and mvn. Later calls return at once; `up` fetches too.
    """
    local = edge_settings().local_broker
    started = time.monotonic()
    with _expected_failures():
        libs = broker.fetch(local)
    console.print(f"Kafka {local.kafka_version} jars in {libs} ({time.monotonic() - started:.1f}s)")


@kafka_app.command("up")
def kafka_up() -> None:
    """Start the local broker in the background and create the topics.

    A no-op if it already runs. With KAFKA_BOOTSTRAP_SERVERS set, start
    nothing: check that cluster and create any missing topics there.
    """
    settings, local = edge_settings().kafka, edge_settings().local_broker
    _quiet_kafka_client()
    started = time.monotonic()
    with _expected_failures():
        was_started = broker.up(settings, local)
    seconds = time.monotonic() - started
    state = broker.status(settings, local) if was_started else None
    _report_up(
        f"Kafka {local.kafka_version}",
        settings.bootstrap,
        settings.uses_local_broker,
        seconds,
        (state.pid, state.log_file) if state else None,
        external=f"Using the Kafka cluster at {settings.bootstrap}; topics are in place",
    )


@kafka_app.command("down")
def kafka_down() -> None:
    """Stop the local broker (SIGTERM, then SIGKILL if it does not stop in time)."""
    settings = edge_settings().kafka
    stopped = broker.down(settings, edge_settings().local_broker)
    _report_down("Kafka", settings.bootstrap, settings.uses_local_broker, stopped)


@kafka_app.command("status")
def kafka_status() -> None:
    """Show whether the broker runs, its pid and address, and the topics with partitions."""
    _quiet_kafka_client()
    state = broker.status(edge_settings().kafka, edge_settings().local_broker)
    pid = f" (pid {state.pid})" if state.pid else ""
    console.print(
        f"Kafka at {state.bootstrap}: {'running' if state.running else 'not running'}{pid}"
    )
    for topic, partitions in state.topics.items():
        console.print(f"  {topic}: {partitions} partition{'s' if partitions != 1 else ''}")
    if state.log_file:
        console.print(f"  log: {state.log_file}")


@mlflow_app.command("up")
def mlflow_up() -> None:
    """Start the local tracking server in the background; wait until healthy.

    A no-op if it already runs. With MLFLOW_TRACKING_URI set, start
    nothing: check that that server answers /health.
    """
    settings, local = edge_settings().mlflow, edge_settings().local_mlflow
    started = time.monotonic()
    with _expected_failures():
        was_started = tracking_server.up(settings, local)
    seconds = time.monotonic() - started
    state = tracking_server.status(settings, local) if was_started else None
    _report_up(
        "MLflow",
        settings.uri,
        settings.uses_local_server,
        seconds,
        (state.pid, state.log_file) if state else None,
        external=f"Using the MLflow server at {settings.uri}; it is healthy",
    )


@mlflow_app.command("down")
def mlflow_down() -> None:
    """Stop the local tracking server (SIGTERM, then SIGKILL if it does not stop in time)."""
    settings = edge_settings().mlflow
    stopped = tracking_server.down(settings, edge_settings().local_mlflow)
    _report_down("MLflow", settings.uri, settings.uses_local_server, stopped)


@mlflow_app.command("status")
def mlflow_status() -> None:
    """Show whether the tracking server runs, its pid, URL and log file."""
    state = tracking_server.status(edge_settings().mlflow, edge_settings().local_mlflow)
    pid = f" (pid {state.pid})" if state.pid else ""
    console.print(f"MLflow at {state.uri}: {'running' if state.running else 'not running'}{pid}")
    if state.log_file:
        console.print(f"  log: {state.log_file}")


@s3_app.command("fetch")
def s3_fetch() -> None:
    """Download S3Proxy's jar from Maven Central into STORAGE_HOME, once.

    Needs java 17+ and mvn. Later calls return at once; `up` fetches too.
    """
    local = edge_settings().local_object_store
    started = time.monotonic()
    with _expected_failures():
        jar = object_store.fetch(local)
    console.print(
        f"S3Proxy {local.s3proxy_version} jar at {jar} ({time.monotonic() - started:.1f}s)"
    )


@s3_app.command("up")
def s3_up() -> None:
    """Start the local S3Proxy in the background and create the bucket.

    A no-op if it already runs. With STORAGE_ENDPOINT_URL set, start
    nothing: check that store and create the bucket there if missing.
    """
    settings, local = edge_settings().storage, edge_settings().local_object_store
    started = time.monotonic()
    with _expected_failures():
        was_started = object_store.up(settings, local)
    seconds = time.monotonic() - started
    state = object_store.status(settings, local) if was_started else None
    _report_up(
        f"S3Proxy {local.s3proxy_version}",
        settings.endpoint,
        settings.uses_local_server,
        seconds,
        (state.pid, state.log_file) if state else None,
        external=f"Using the object store at {settings.endpoint}; bucket {settings.bucket} exists",
    )


@s3_app.command("down")
def s3_down() -> None:
    """Stop the local S3Proxy (its objects stay in STORAGE_HOME/data)."""
    settings = edge_settings().storage
    stopped = object_store.down(settings, edge_settings().local_object_store)
    _report_down("S3Proxy", settings.endpoint, settings.uses_local_server, stopped)


@s3_app.command("status")
def s3_status() -> None:
    """Show whether the object store runs, its pid, address, buckets and log file."""
    state = object_store.status(edge_settings().storage, edge_settings().local_object_store)
    pid = f" (pid {state.pid})" if state.pid else ""
    running = "running" if state.running else "not running"
    console.print(f"Object store at {state.endpoint}: {running}{pid}")
    for bucket in state.buckets:
        console.print(f"  bucket: {bucket}")
    if state.log_file:
        console.print(f"  log: {state.log_file}")
