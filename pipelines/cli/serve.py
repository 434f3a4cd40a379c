"""`lambda-ml serve`: the serving layer's BentoML server, in the foreground.

The command becomes `bentoml serve serving.service:IntentClassifier` (the process is replaced,
so signals such as Ctrl-C or a container stop reach the server directly).
"""

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.edge import settings as edge_settings
from pipelines.services.bento_server import (
    SERVER_ENV,
    SERVICE_NAME,
    SERVICE_TARGET,
    bentoml_argv,
    bentoml_overrides,
)


def serve(
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default: SERVING_PORT, 3000).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: SERVING_HOST, 127.0.0.1).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="BentoML worker processes.")] = 1,
    reload_interval: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Seconds between checks for a new champion or snapshot (SERVING_POLL_S)."
        ),
    ] = None,
    keep_access_log: Annotated[
        bool, typer.Option(help="Log every request (off by default: it costs throughput).")
    ] = False,
) -> None:
    """Serve intent predictions over HTTP: batch champion + speed snapshot, hot-reloaded."""
    settings = edge_settings().serving
    if reload_interval is not None:
        os.environ["SERVING_POLL_S"] = str(reload_interval)
    os.environ["BENTOML_CONFIG_OVERRIDES"] = bentoml_overrides(
        SERVICE_NAME, workers, access_log=keep_access_log
    )
    for key, value in SERVER_ENV.items():
        os.environ.setdefault(key, value)
    host, port = host or settings.host, port or settings.port
    # BentoML keeps /metrics in files under $BENTOML_HOME and empties them when a server
    # starts: two servers on one host sharing the default home wipe each other's metrics.
    os.environ.setdefault("BENTOML_HOME", str(Path("var/bentoml", f"port-{port}").resolve()))
    argv = bentoml_argv(SERVICE_TARGET, port, host)
    typer.echo(f"serving {SERVICE_TARGET} on http://{host}:{port} ({workers} workers)")
    os.execv(argv[0], argv)
