"""`lambda-ml kafka|mlflow|s3 fetch|up|down|status`: the local services the pipeline runs on.

One command group per launcher, all built by `service_app`. Settings come from the tree read
once at the CLI edge (`pipelines.cli.edge`). Expected failures (a missing tool, a busy port, a
server that died at start-up) print one red line, plus the end of the service's log when there
is one, and exit with status 1 instead of a traceback.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from common.processes import ServiceError
from pipelines.cli.edge import settings as edge_settings
from pipelines.services.broker import KafkaLauncher
from pipelines.services.launcher import Launcher, ServiceStatus
from pipelines.services.object_store import ObjectStoreLauncher
from pipelines.services.tracking_server import MlflowLauncher

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


def _print_status(state: ServiceStatus, headline: str) -> None:
    console.print(headline, markup=False)
    for line in (*state.contents, *([f"log: {state.log_file}"] if state.log_file else [])):
        console.print(f"  {line}", markup=False)


def _doc(method: object) -> str:
    """A method's docstring as one paragraph of help."""
    return " ".join((inspect.getdoc(method) or "").split())


def service_app(kind: type[Launcher[Any, Any]]) -> typer.Typer:
    """The `fetch`, `up`, `down` and `status` commands of one kind of service."""
    app = typer.Typer(help=inspect.getdoc(kind), no_args_is_help=True)

    def launcher() -> Launcher[Any, Any]:
        for name in kind.client_loggers:  # the commands report the outcome themselves
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return kind.of(edge_settings())

    @app.command("fetch", help=f"{_doc(kind.fetch)} `up` does this too.")
    def fetch() -> None:
        service, started = launcher(), time.monotonic()
        with _expected_failures():
            path = service.fetch()
        console.print(f"{service.label} in {path} ({time.monotonic() - started:.1f}s)")

    @app.command(
        "up",
        help=f"Start the local {kind.product} in the background unless it runs, then: "
        f"{_doc(kind.prepare)}\n\nWith {kind.address_variable} set, start nothing: use that one.",
    )
    def up() -> None:
        service, started = launcher(), time.monotonic()
        with _expected_failures():
            was_started = service.up()
        seconds = time.monotonic() - started
        state = service.status()
        if was_started:
            headline = f"{service.label} up at {state.address} (pid {state.pid}) in {seconds:.1f}s"
        elif service.uses_local_server:
            headline = f"{service.label} is already running at {state.address}"
        else:
            headline = f"{kind.name} at {state.address}, as {kind.address_variable} says"
        _print_status(state, headline)

    @app.command(
        "down",
        help=f"Stop the local {kind.product} (SIGTERM, then SIGKILL if it does not stop in "
        f"time); its data stays in {kind.prefix}HOME.",
    )
    def down() -> None:
        service = launcher()
        if service.down():
            console.print(f"{kind.name} stopped")
        elif service.uses_local_server:
            console.print(f"{kind.name} was not running")
        else:
            console.print(f"{kind.name} at {service.address} is not ours to stop")

    @app.command("status", help="Show whether it runs, where, its pid, log file and contents.")
    def status() -> None:
        state = launcher().status()
        pid = f" (pid {state.pid})" if state.pid else ""
        running = "running" if state.running else "not running"
        _print_status(state, f"{kind.name} at {state.address}: {running}{pid}")

    return app


kafka_app, mlflow_app, s3_app = (
    service_app(kind) for kind in (KafkaLauncher, MlflowLauncher, ObjectStoreLauncher)
)
