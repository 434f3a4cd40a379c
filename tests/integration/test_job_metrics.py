"""The jobs' `/metrics` and `/healthz` against the real thing: Debian's Prometheus server scrapes
`lambda-ml speed`, `archive`, `schedule` and the BentoML service during a live replay and is
asked through its HTTP API; and an archiver whose store stops answering mid-write reports its
loop stalled, then alive again once the store answers."""

import io
import json
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from mlflow import MlflowClient
from rich.console import Console

from common.processes import ChildProcess, free_ports
from models.registry import fetch_champion
from pipelines.produce import ReplayOptions, run_produce
from streams.master_dataset import archived_positions
from tests.integration.cli_processes import CLI, RunningJobs, storage_env, stream_jobs_env
from tests.integration.live_service import running_traffic, serving_process
from tests.integration.test_retrain import settings_for

pytestmark = pytest.mark.integration

PROMETHEUS = Path("/usr/bin/prometheus")  # Debian's package (scripts/install-system-deps.sh)
EVENTS = 3000
BOUND_S = 240.0


@contextmanager
def prometheus(targets: dict[str, int], workdir: Path) -> Iterator[str]:
    """The Prometheus server scraping `targets` (job -> port on the loopback) every second,
    with a storage folder of its own; yields its URL."""
    (port,) = free_ports(1)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
            for job, target in targets.items()
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    server = ChildProcess(
        "prometheus",
        [
            str(PROMETHEUS),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=workdir / "prometheus.log",
        port=port,
        ready_path="/-/ready",
    )
    with server:
        server.wait_ready(timeout_s=60)
        yield server.url


def query(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    """An instant query's result: each series' labels and value."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return [(series["metric"], float(series["value"][1])) for series in body["data"]["result"]]


def scalar(url: str, promql: str) -> float:
    """The value of a query with one series; NaN while Prometheus has none (or several)."""
    found = query(url, promql)
    return found[0][1] if len(found) == 1 else float("nan")


def test_prometheus_scrapes_every_job_during_a_live_replay(kafka, mlflow_server, tmp_path):
    settings = kafka.fresh_settings(partitions=2)
    tracking = settings_for(mlflow_server)
    speed_port, archive_port, schedule_port = free_ports(3)
    env = stream_jobs_env(
        settings,
        tmp_path,
        MLFLOW_TRACKING_URI=mlflow_server,
        MLFLOW_EXPERIMENT=tracking.experiment,
        MLFLOW_REGISTERED_MODEL=tracking.registered_model,
        BATCH_MIN_ACCURACY="0",
        BATCH_LOCK_PATH=tmp_path / "retrain.lock",
        SPEED_METRICS_EVERY_S="1",
        SPEED_CHAMPION_POLL_S="1",
        METRICS_SPEED_PORT=str(speed_port),
        METRICS_ARCHIVE_PORT=str(archive_port),
        METRICS_SCHEDULE_PORT=str(schedule_port),
    )
    jobs = {
        "speed": ["speed"],
        "archive": ["archive"],
        "schedule": ["schedule", "--interval", "15"],
    }
    server = serving_process(
        mlflow_server,
        tracking.registered_model,
        tmp_path / "snapshots",
        tmp_path / "serve",
        workers=1,
    )
    assert server.port is not None
    targets = {"speed": speed_port, "archive": archive_port, "schedule": schedule_port}
    replay = threading.Thread(
        target=run_produce,
        args=(settings, ReplayOptions(limit=EVENTS, rate=300), Console(file=io.StringIO())),
    )
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    with (
        RunningJobs(jobs, env, tmp_path / "logs") as running,
        server,
        prometheus(targets | {"serve": server.port}, tmp_path / "prometheus") as url,
    ):
        replay.start()
        server.wait_ready(timeout_s=BOUND_S)  # ready at the speed layer's first snapshot
        with running_traffic(server.url):
            first_seen = 'lambda_ml_speed_accuracy{texts="first_seen"}'
            # Before a champion (whose cut-off may be the stream's end) re-bases the layer.
            running.wait_until(
                lambda: (
                    {labels["view"] for labels, _ in query(url, first_seen)} >= {"speed", "blend"}
                ),
                "the speed layer's first-seen accuracy",
                BOUND_S,
            )
            accuracy = query(url, first_seen)

            def speed_caught_up() -> bool:
                champion = fetch_champion(client, tracking.registered_model)
                if champion is None:
                    return False
                after_cutoff = EVENTS - sum(champion.cutoff_offsets.values())
                return (
                    scalar(url, "lambda_ml_speed_events_learnt") == after_cutoff
                    and scalar(url, "sum(lambda_ml_speed_lag_events)") == 0
                )

            running.wait_until(speed_caught_up, "the speed layer learnt the stream", BOUND_S)
            running.wait_until(
                lambda: scalar(url, 'sum(lambda_ml_answers_total{source="blend"})') > 0,
                "the service answered with the blend",
                BOUND_S,
            )
            running.wait_until(
                lambda: scalar(url, "lambda_ml_archive_events_total") == EVENTS,
                "the archiver archived the stream",
                BOUND_S,
            )
            running.wait_until(
                lambda: (
                    scalar(url, 'lambda_ml_schedule_runs_total{outcome="succeeded"}') >= 1
                    and scalar(url, 'lambda_ml_schedule_last_run_outcome{outcome="skipped"}') == 1
                ),
                "a retrain registered a version, and a later one had nothing new",
                BOUND_S,
            )
        replay.join()
        up = {labels["job"]: value for labels, value in query(url, "up")}
        batch_calls = scalar(url, "sum(lambda_ml_coalesced_batch_size_count)")
        files = scalar(url, "lambda_ml_archive_files_written_total")
        written = scalar(url, "lambda_ml_archive_bytes_written_total")
        next_run = scalar(url, "lambda_ml_schedule_next_run_timestamp_seconds")
        last_start = scalar(url, "lambda_ml_schedule_last_run_start_timestamp_seconds")
        health = {
            job: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            for job, port in targets.items()
        }
        service_alive = httpx.get(f"{server.url}/livez", timeout=5).status_code
    assert running.codes == {"speed": 0, "archive": 0, "schedule": 0}, running.logs
    assert up == {"speed": 1, "archive": 1, "schedule": 1, "serve": 1}
    assert batch_calls > 0
    assert files >= 2 and written > 0  # two partitions, each flushed at least once
    assert next_run > last_start > 0
    assert all(0 <= value <= 1 for _, value in accuracy), accuracy
    assert all(r.status_code == 200 and r.text.endswith("alive\n") for r in health.values()), health
    assert service_alive == 200


class HeldLink:
    """A TCP relay to a port on the loopback whose traffic can be held (`hold`) and let go
    (`release`): a store that stops answering in the middle of a request, and comes back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:  # closed
                return
            far = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_an_archiver_whose_store_stops_answering_is_reported_stalled(kafka, object_store, tmp_path):
    settings = kafka.fresh_settings(partitions=2)

    def produce(run_id: str, events: int) -> None:
        options = ReplayOptions(limit=events, run_id=run_id)
        run_produce(settings, options, Console(file=io.StringIO()))

    link = HeldLink(int(urlsplit(object_store.settings.endpoint).port or 0))
    (port,) = free_ports(1)
    master = object_store.new_url("master")
    env = stream_jobs_env(
        settings,
        tmp_path,
        **storage_env(object_store) | {"STORAGE_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"},
        BATCH_MASTER_DIR=master,
        ARCHIVE_FLUSH_EVERY_S="0.2",
        METRICS_ARCHIVE_PORT=str(port),
        METRICS_STALL_S="2",
    )
    endpoint = f"http://127.0.0.1:{port}"

    def archived() -> float | None:
        """The archiver's count of events archived, from its `/metrics`."""
        try:
            lines = httpx.get(f"{endpoint}/metrics", timeout=5).text.splitlines()
        except httpx.HTTPError:  # not listening yet
            return None
        found = [line for line in lines if line.startswith("lambda_ml_archive_events_total ")]
        return float(found[0].split()[1]) if found else None

    def health() -> tuple[int, str]:
        try:
            response = httpx.get(f"{endpoint}/healthz", timeout=5)
        except httpx.HTTPError:
            return 0, ""
        return response.status_code, response.text

    produce("before", 1000)
    job = ChildProcess("archive", [*CLI, "archive"], env=env, log_path=tmp_path / "archive.log")
    try:
        with job:
            job.wait_ready(lambda: archived() == 1000, timeout_s=BOUND_S)
            assert health() == (200, "archive: alive\n")
            link.hold()
            produce("while-held", 500)  # the next flush's write now waits on the store
            job.wait_ready(lambda: health()[0] == 503, timeout_s=BOUND_S)
            status, stalled = health()
            assert (
                status == 503 and archived() == 1000
            )  # the process answers; its loop does not move
            link.release()
            job.wait_ready(lambda: health()[0] == 200, timeout_s=BOUND_S)
            job.wait_ready(lambda: archived() == 1500, timeout_s=BOUND_S)
            job.send_signal(signal.SIGTERM)
            assert job.wait(timeout_s=60) == 0, job.log_tail()
    finally:
        link.release()
        link.close()
    assert stalled.startswith("archive: stalled: no heartbeat from the loop for "), stalled
    assert sum(archived_positions(master, object_store.settings).values()) == 1500
