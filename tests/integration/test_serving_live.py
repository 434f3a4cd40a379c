"""The real server (`bentoml serve`, two workers) against the real MLflow server.

While a client sends requests without pause, a new champion is promoted in the registry and
the speed layer writes a new snapshot: no request may fail, and the new versions must show up
in the answers (of both workers) within a bounded time.
"""

import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.live_service import (
    fit_batch,
    register,
    running_traffic,
    serving_process,
    training_rows,
    wait_until,
    write_snapshot,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def train_rows():
    return training_rows()


def test_hot_swap_under_load_fails_no_request(mlflow_server: str, tmp_path: Path, train_rows):
    name = f"serving-live-{uuid.uuid4().hex[:8]}"
    half = len(train_rows) // 2
    first = register(mlflow_server, name, fit_batch(train_rows[:half]), {0: 100})
    snapshots = tmp_path / "snapshots"
    write_snapshot(snapshots, train_rows[:half], {0: 110})

    server = serving_process(mlflow_server, name, snapshots, tmp_path)
    with server:
        server.wait_ready(timeout_s=180)
        with running_traffic(server.url) as (traffic,):
            # Ready means some model answers; the champion's download may still be going on.
            wait_until(lambda: [m["batch_version"] for m in traffic.latest(20)] == [first] * 20)
            assert {source for source, _ in traffic.answers[-20:]} == {"blend"}

            second = register(mlflow_server, name, fit_batch(train_rows), {0: 200})
            write_snapshot(snapshots, train_rows, {0: 210})
            swapped_at = time.monotonic()
            expected = {
                "batch_version": second,
                "batch_cutoff_offsets": {"0": 200},
                "speed_snapshot_offsets": {"0": 210},
            }

            def all_new(models: dict) -> bool:
                return all(models[key] == value for key, value in expected.items())

            wait_until(lambda: all(all_new(m) for m in traffic.latest(40)))
            switch_s = time.monotonic() - swapped_at

        assert traffic.failures == []
        assert len(traffic.answers) > 100
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'lambda_ml_batch_model_version{pid="' in metrics
        assert any(
            line.startswith("lambda_ml_batch_model_version") and line.endswith(f" {second}.0")
            for line in metrics.splitlines()
        )
        assert "bentoml_service_request_total" in metrics
        print(f"new champion and snapshot in every answer {switch_s:.1f}s after the swap")
        started = server.processes()
        assert len(started) >= 3  # the arbiter and two workers
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
