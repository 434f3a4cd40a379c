"""The jobs' `/metrics` and `/healthz`: the heartbeat's judgement, the HTTP endpoint, and the
figures each job's loop keeps, as Prometheus reads them."""

import socket
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from common.job_metrics import (
    Family,
    FiguresCollector,
    Heartbeat,
    JobEndpoint,
    MetricsPortInUse,
)
from common.processes import free_port
from pipelines.batch.schedule import Cadence, Scheduler
from pipelines.job_figures import schedule_collector
from pipelines.speed.figures import SPEED_FAMILIES, speed_samples
from serving.metrics import ServiceMetrics
from serving.model_state import ModelReloader
from tests.unit.test_speed_layer import FakeClock, run_layer


def test_a_heartbeat_is_stalled_past_its_bound_and_a_long_step_can_say_so():
    clock = FakeClock()
    heartbeat = Heartbeat(stall_s=10, clock=clock)
    clock.now += 10
    assert heartbeat.stalled() is None
    clock.now += 0.5
    assert heartbeat.stalled() == "no heartbeat from the loop for 10.5s, over its bound of 10s"
    heartbeat.beat(within_s=600, doing="a retrain (schedule)")
    clock.now += 599
    assert heartbeat.stalled() is None and heartbeat.age_s == 599
    clock.now += 2
    assert "from a retrain (schedule) for 601.0s" in (heartbeat.stalled() or "")
    heartbeat.beat()  # the loop turns again: the usual bound is back
    clock.now += 11
    assert "over its bound of 10s" in (heartbeat.stalled() or "")


def test_the_endpoint_serves_the_figures_and_turns_unhealthy_when_the_loop_stalls():
    clock = FakeClock()
    figures = {"done": 3.0}
    endpoint = JobEndpoint("demo", "127.0.0.1", free_port(), Heartbeat(5, clock), "METRICS_X")
    endpoint.register(
        FiguresCollector(
            [Family("lambda_ml_demo_done", "Things done", "counter", ("kind",))],
            lambda: [("lambda_ml_demo_done", ("real",), figures["done"])],
        )
    )
    url = f"http://127.0.0.1:{endpoint.port}"
    try:
        scraped = httpx.get(f"{url}/metrics").text
        assert "# TYPE lambda_ml_demo_done_total counter" in scraped
        assert 'lambda_ml_demo_done_total{kind="real"} 3.0' in scraped
        assert "lambda_ml_demo_heartbeat_age_seconds 0.0" in scraped
        assert "process_resident_memory_bytes" in scraped
        figures["done"] = 4.0  # read at each scrape, not copied
        assert 'lambda_ml_demo_done_total{kind="real"} 4.0' in httpx.get(f"{url}/metrics").text
        healthy = httpx.get(f"{url}/healthz")
        assert healthy.status_code == 200 and healthy.text == "demo: alive\n"
        clock.now += 6
        stalled = httpx.get(f"{url}/healthz")
        assert stalled.status_code == 503
        assert stalled.text.startswith("demo: stalled: no heartbeat from the loop for 6.0s")
        assert httpx.get(f"{url}/metrics").status_code == 200  # the process itself answers
        endpoint.heartbeat.beat()
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        endpoint.close()


def test_a_port_in_use_is_a_clear_error_and_port_zero_serves_nothing():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortInUse, match=f"127.0.0.1:{port}.*set METRICS_SPEED_PORT"):
            JobEndpoint("speed", "127.0.0.1", port, Heartbeat(5), "METRICS_SPEED_PORT")
    off = JobEndpoint("speed", "127.0.0.1", 0, Heartbeat(5), "METRICS_SPEED_PORT")
    assert off.port is None
    off.close()


def test_every_figure_of_a_speed_report_has_its_metric(tmp_path):
    layer, *_ = run_layer(tmp_path, 30)
    report = layer.reporter.latest
    registry = CollectorRegistry()
    registry.register(FiguresCollector(SPEED_FAMILIES, lambda: speed_samples(report)))
    value = registry.get_sample_value
    assert value("lambda_ml_speed_events_learnt") == 30
    assert value("lambda_ml_speed_lag_events", {"partition": "0"}) == 0
    assert value("lambda_ml_speed_blend_weight", {"layer": "speed"}) == report["speed_weight"]
    for texts in ("all", "first_seen"):
        labels = {"view": "speed", "texts": texts}
        key = "speed_accuracy" if texts == "all" else f"speed_{texts}_accuracy"
        assert value("lambda_ml_speed_accuracy", labels) == report[key]
    assert (
        value("lambda_ml_speed_freshness_seconds", {"quantile": "0.95"})
        == (report["freshness_p95_s"])
    )
    assert value("lambda_ml_speed_snapshot_age_seconds") == report["snapshot_age_s"]
    with pytest.raises(KeyError, match="'renamed_figure' has no metric"):
        list(speed_samples({"renamed_figure": 1.0}))


class NothingToDo(Exception):
    pass


def test_the_scheduler_shows_its_last_run_and_the_next_and_beats_around_a_run(tmp_path):
    clock = FakeClock()
    heartbeat = Heartbeat(stall_s=5, clock=clock)
    verdicts = []

    def job():
        clock.now += 60  # a retrain far longer than a turn of the wait loop
        verdicts.append(heartbeat.stalled())
        raise NothingToDo("nothing archived since the cut-off")

    scheduler = Scheduler(
        job,
        Cadence(interval_s=600),
        tmp_path / "lock",
        skip_errors=(NothingToDo,),
        heartbeat=heartbeat,
        run_stall_s=3600,
    )
    registry = CollectorRegistry()
    registry.register(schedule_collector(scheduler))
    value = registry.get_sample_value
    assert value("lambda_ml_schedule_last_run_outcome", {"outcome": "skipped"}) is None
    started = time.time()
    assert scheduler.tick(started) is not None
    assert verdicts == [None]  # the run said how long it may take
    assert value("lambda_ml_schedule_runs_total", {"outcome": "skipped"}) == 1
    assert value("lambda_ml_schedule_runs_total", {"outcome": "succeeded"}) == 0
    assert value("lambda_ml_schedule_last_run_outcome", {"outcome": "skipped"}) == 1
    assert value("lambda_ml_schedule_last_run_outcome", {"outcome": "failed"}) == 0
    assert value("lambda_ml_schedule_last_run_start_timestamp_seconds") == started
    assert value("lambda_ml_schedule_next_run_timestamp_seconds") == started + 600
    assert value("lambda_ml_schedule_last_run_duration_seconds") >= 0


class UnreachableRegistry:
    def current(self):
        raise ConnectionError("MLflow is down")

    def load(self, info):
        raise AssertionError("never reached")


def test_the_service_counts_failed_reloads_by_model():
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    reloader = ModelReloader(UnreachableRegistry(), None, on_failure=metrics.reload_failed)
    reloader.refresh()
    reloader.refresh()
    assert registry.get_sample_value("lambda_ml_reload_failures_total", {"model": "champion"}) == 2
