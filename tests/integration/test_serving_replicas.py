"""Two serving replicas on one shared store: each its own `bentoml serve`, both following the
registry's champion and reading the speed snapshots of four partitions from the S3-compatible
server, as replicas on two machines do. After every change (a partition's new snapshot, a new
champion) both answer with the same batch version and snapshot offsets, and at no moment is
one more than that one change behind the other."""

import time
import uuid
from pathlib import Path

import httpx
import pytest

from models.blend import Blender
from models.snapshot import SnapshotStore, SpeedSnapshot
from models.speed_model import build_speed_model
from tests.integration.cli_processes import storage_env
from tests.integration.live_service import fit_batch, register, serving_process, training_rows

pytestmark = pytest.mark.integration

PARTITIONS = 4
POLL_S = 0.5
CHANGE_TIMEOUT_S = 60.0


def save_partition(store: SnapshotStore, rows, partition: int, offset: int) -> None:
    model = build_speed_model()
    for example in rows[partition::PARTITIONS]:
        model.learn_one({"text": example.text}, example.intent)
    store.save(
        SpeedSnapshot(
            model=model,
            blender=Blender(),
            offsets={partition: offset},
            events_learnt=len(rows[partition::PARTITIONS]),
            partition=partition,
        )
    )


def state_of(url: str) -> tuple[str | None, tuple]:
    """(batch version, snapshot offsets) of one answer of the replica at `url`."""
    response = httpx.post(f"{url}/predict", json={"text": "wake me up at 7"}, timeout=10.0)
    assert response.status_code == 200, response.text
    models = response.json()["models"]
    offsets = models["speed_snapshot_offsets"] or {}
    return models["batch_version"], tuple(sorted((int(p), o) for p, o in offsets.items()))


@pytest.mark.reliability
def test_two_replicas_on_one_store_answer_alike_within_one_change(
    mlflow_server, object_store, tmp_path: Path, reliability
):
    rows = training_rows()
    name = f"replicas-{uuid.uuid4().hex[:8]}"
    url = f"{object_store.new_url()}/snapshots"
    store = SnapshotStore(url, storage=object_store.settings)
    offsets = {p: 100 for p in range(PARTITIONS)}
    for partition in range(PARTITIONS):
        save_partition(store, rows, partition, offsets[partition])
    version = register(mlflow_server, name, fit_batch(rows[: len(rows) // 2]), {0: 50})

    def expected() -> tuple[str, tuple]:
        return version, tuple(sorted(offsets.items()))

    replicas = [
        serving_process(
            mlflow_server,
            name,
            url,  # type: ignore[arg-type]  # a URL where a folder may stand
            tmp_path / f"replica-{i}",
            workers=1,
            poll_s=POLL_S,
            **storage_env(object_store),
        )
        for i in range(2)
    ]
    history = [expected()]
    skews: list[float] = []
    with replicas[0], replicas[1]:
        for replica in replicas:
            replica.wait_ready(timeout_s=180)
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while not all(state_of(replica.url) == history[0] for replica in replicas):
            assert time.monotonic() < deadline, "the replicas never served the first models"
            time.sleep(0.1)
        for change in range(7):
            if change == 3:
                version = register(mlflow_server, name, fit_batch(rows), {0: 90})
            else:
                partition = change % PARTITIONS
                offsets[partition] += 50
                save_partition(store, rows, partition, offsets[partition])
            history.append(expected())
            reached_at: dict[int, float] = {}
            deadline = time.monotonic() + CHANGE_TIMEOUT_S
            while len(reached_at) < 2:
                assert time.monotonic() < deadline, f"change {change} not served by both"
                seen = [state_of(replica.url) for replica in replicas]
                steps = [history.index(s) if s in history else -1 for s in seen]
                assert min(steps) >= len(history) - 2, (change, seen)  # one change behind at most
                for i, step in enumerate(steps):
                    if step == len(history) - 1:
                        reached_at.setdefault(i, time.monotonic())
            skews.append(abs(reached_at[0] - reached_at[1]))
            assert state_of(replicas[0].url) == state_of(replicas[1].url) == history[-1]
    scenario = "two serving replicas on one S3 store"
    reliability(
        scenario,
        "largest seconds between the replicas taking up a change",
        round(max(skews), 2),
        goal=f"<= one poll ({POLL_S} s) plus one request",
    )
