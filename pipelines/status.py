"""The whole system at a glance: the broker and topic, the consumer groups' lag, the master
dataset, the registry's champion and challenger, the speed snapshots, the service and the last
retrain, each read with the same settings the jobs use.

Every part is read on its own, at the same time as the others, and one that cannot be reached
shows as such with the reason, while the rest are still shown. The broker, the registry and the
master dataset are essential: the status is unhealthy (exit code 1) when any of them is down.
"""

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlflow import MlflowClient
from rich.markup import escape
from rich.table import Table

from common.processes import ServiceError
from common.settings import Settings
from models.registry import (
    CHALLENGER,
    CHAMPION,
    CUTOFF_TAG,
    FEEDBACK_CUTOFF_TAG,
    alias_version,
    decode_offsets,
)
from models.snapshot import SnapshotStore, SpeedSnapshot
from pipelines.batch.retrain_task import last_outcome
from pipelines.services import broker
from pipelines.services.tracking_server import is_healthy
from pipelines.tracking import tracking_client
from streams.master_dataset import archived_positions, footprint, open_root

log = logging.getLogger(__name__)

# How long the broker may take to answer before it counts as unreachable.
KAFKA_TIMEOUT_MS = 5_000
SERVICE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Part:
    """One part of the system as the status found it: `ok`, a line for people (`summary`),
    the figures behind it (`details`), or why it could not be read (`error`)."""

    name: str
    ok: bool
    essential: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_record(self) -> dict[str, Any]:
        record = {"ok": self.ok, "essential": self.essential, "summary": self.summary}
        return record | ({"error": self.error} if self.error else {}) | self.details


@dataclass(frozen=True)
class SystemStatus:
    parts: list[Part]
    checked_at: float

    @property
    def healthy(self) -> bool:
        """True unless an essential part (broker, registry, master dataset) is down."""
        return all(part.ok for part in self.parts if part.essential)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def as_record(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checked_at": datetime.fromtimestamp(self.checked_at).astimezone().isoformat(),
            "parts": {part.name: part.as_record() for part in self.parts},
        }


def snapshot_store(tree: Settings) -> SnapshotStore:
    """The speed layer's snapshot store, as the jobs configure it."""
    return SnapshotStore(tree.speed.snapshot_dir, storage=tree.storage)


def system_status(tree: Settings) -> SystemStatus:
    """Read every part at once; none waits for another except for the topic's end offsets,
    which the lag figures need."""
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="status") as pool:
        ends = pool.submit(
            broker.end_offsets, tree.kafka.bootstrap, tree.kafka.topic, KAFKA_TIMEOUT_MS
        )
        futures = [
            pool.submit(_read, "kafka", True, lambda: _kafka(tree, ends)),
            pool.submit(_read, "consumer groups", False, lambda: _groups(tree, ends)),
            pool.submit(_read, "archive", True, lambda: _archive(tree, ends)),
            pool.submit(_read, "registry", True, lambda: _registry(tree)),
            pool.submit(_read, "last retrain", False, lambda: _last_retrain(tree)),
            pool.submit(_read, "speed", False, lambda: _speed(tree, ends)),
            pool.submit(_read, "service", False, lambda: _service(tree)),
        ]
        return SystemStatus([future.result() for future in futures], time.time())


Reading = tuple[bool, str, dict[str, Any]]


def _read(name: str, essential: bool, read: Callable[[], Reading]) -> Part:
    """One part, read by `read`; any failure becomes the part's error, never a traceback."""
    try:
        ok, summary, details = read()
    except Exception as exc:
        log.debug("status of %s", name, exc_info=True)
        return Part(name, False, essential, "unreachable", error=_reason(exc))
    return Part(name, ok, essential, summary, details)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return text if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {text}"


def _ends(ends: "Future[dict[int, int]]") -> dict[int, int] | None:
    """The topic's end offsets, or None when the broker did not give them."""
    try:
        return ends.result()
    except Exception:
        return None


def _kafka(tree: Settings, ends: "Future[dict[int, int]]") -> Reading:
    kafka = tree.kafka
    offsets = ends.result()
    details: dict[str, Any] = {
        "bootstrap": kafka.bootstrap,
        "topic": kafka.topic,
        "partitions": len(offsets),
        "end_offsets": offsets,
        "events": sum(offsets.values()),
    }
    try:
        dead = broker.end_offsets(kafka.bootstrap, kafka.dlq_topic, KAFKA_TIMEOUT_MS)
        details["dead_letters"] = sum(dead.values())
        letters = f"; {details['dead_letters']:,} dead letters on {kafka.dlq_topic}"
    except ServiceError:
        letters = f"; no topic {kafka.dlq_topic}"
    summary = (
        f"{kafka.bootstrap}, topic {kafka.topic}: {len(offsets)} partitions, end offsets "
        f"{_offsets(offsets)} ({details['events']:,} events){letters}"
    )
    return True, summary, details


def _groups(tree: Settings, ends: "Future[dict[int, int]]") -> Reading:
    topic_ends = ends.result()
    committed = broker.committed_offsets(tree.kafka.bootstrap, tree.kafka.topic, KAFKA_TIMEOUT_MS)
    groups = {
        group: {"committed": offsets, "lag": _lag(topic_ends, offsets)}
        for group, offsets in committed.items()
    }
    summary = "; ".join(f"{g} lag {d['lag']:,}" for g, d in groups.items()) or "none committed"
    return bool(groups), summary, {"groups": groups}


def _lag(ends: dict[int, int], positions: dict[int, int]) -> int:
    """Events on the topic past `positions` (a partition without one counts from 0)."""
    return sum(max(0, end - positions.get(p, 0)) for p, end in ends.items())


def _archive(tree: Settings, ends: "Future[dict[int, int]]") -> Reading:
    root = open_root(tree.batch.master_dir, tree.storage)
    positions = archived_positions(root)
    files, size = footprint(root)
    details: dict[str, Any] = {
        "location": root.url,
        "files": files,
        "bytes": size,
        "newest_offsets": positions,
    }
    topic_ends = _ends(ends)
    behind = ""
    if topic_ends is not None:
        details["behind_topic"] = _lag(topic_ends, positions)
        behind = f"; {details['behind_topic']:,} events behind the topic"
    summary = (
        f"{root.url}: {files:,} files, {_size(size)}; next offsets "
        f"{_offsets(positions) if positions else 'none (nothing archived)'}{behind}"
    )
    return True, summary, details


def _registry(tree: Settings) -> Reading:
    tracking = tree.mlflow
    _require_mlflow(tracking.uri)
    client = tracking_client(tracking)
    versions = {
        alias: _version(client, tracking.registered_model, alias)
        for alias in (CHAMPION, CHALLENGER)
    }
    lines = [
        f"{alias} {_describe_version(found)}" if found else f"{alias}: none"
        for alias, found in versions.items()
    ]
    details = {"uri": tracking.uri, "registered_model": tracking.registered_model, **versions}
    return True, f"{tracking.registered_model} at {tracking.uri}\n" + "\n".join(lines), details


def _require_mlflow(uri: str) -> None:
    """Fail at once when MLflow is away, instead of after its client's retries."""
    if not is_healthy(uri):
        raise ServiceError(f"MLflow at {uri} does not answer /health")


def _version(client: MlflowClient, name: str, alias: str) -> dict[str, Any] | None:
    """The version `alias` points at, with its scores and age, or None."""
    version = alias_version(client, name, alias)
    if version is None:
        return None
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        "first_seen_accuracy": metrics.get("holdout_first_seen_accuracy"),
        "macro_f1": metrics.get("holdout_macro_f1"),
        "cutoff_offsets": decode_offsets(version.tags.get(CUTOFF_TAG)),
        "cutoff_feedback_offsets": decode_offsets(version.tags.get(FEEDBACK_CUTOFF_TAG)),
        "age_s": round(time.time() - version.creation_timestamp / 1000, 1),
    }


def _describe_version(found: dict[str, Any]) -> str:
    scores = ", ".join(
        f"{label} {found[key]:.4f}"
        for key, label in (("first_seen_accuracy", "first-seen accuracy"), ("macro_f1", "macro-F1"))
        if found[key] is not None
    )
    labels = found["cutoff_feedback_offsets"]
    return (
        f"v{found['version']} ({scores or 'no scores'}), registered {_age(found['age_s'])} ago, "
        f"cut-off {_offsets(found['cutoff_offsets'])}"
        + (f", labels {_offsets(labels)}" if labels else "")
    )


def _last_retrain(tree: Settings) -> Reading:
    _require_mlflow(tree.mlflow.uri)
    outcome = last_outcome(tree.mlflow)
    if outcome is None:
        return True, "none recorded", {}
    age = time.time() - datetime.fromisoformat(outcome["finished_at"]).timestamp()
    version = f" v{outcome['version']}" if outcome.get("version") else ""
    summary = f"{outcome['kind']}{version}, {_age(age)} ago: {outcome['reason']}"
    return outcome["kind"] != "failed", summary, outcome | {"age_s": round(age, 1)}


def _speed(tree: Settings, ends: "Future[dict[int, int]]") -> Reading:
    store = snapshot_store(tree)
    snapshots = _newest_snapshots(store)
    if not snapshots:
        return False, f"no snapshot in {store.location}", {"partitions": {}}
    topic_ends = _ends(ends)
    max_age = tree.serving.max_snapshot_age_s
    rows: dict[str, dict[str, Any]] = {}
    lines = []
    for key, snapshot in snapshots.items():
        row: dict[str, Any] = {
            "offsets": snapshot.offsets,
            "events_learnt": snapshot.events_learnt,
            "age_s": round(snapshot.age_s, 1),
            "stale": snapshot.age_s > max_age,
        }
        if topic_ends is not None:
            row["behind_topic"] = _lag(
                {p: topic_ends.get(p, 0) for p in snapshot.offsets}, snapshot.offsets
            )
        rows[key] = row
        stale = " (stale)" if row["stale"] else ""
        behind = f", {row['behind_topic']:,} behind" if "behind_topic" in row else ""
        lines.append(
            f"{key}: offsets {_offsets(snapshot.offsets)}, {snapshot.events_learnt:,} events "
            f"learnt, snapshot {_age(snapshot.age_s)} old{stale}{behind}"
        )
    fresh = not any(row["stale"] for row in rows.values())
    return fresh, "\n".join(lines), {"partitions": rows}


def _newest_snapshots(store: SnapshotStore) -> dict[str, SpeedSnapshot]:
    """Each partition's newest snapshot (`p0`, ...) of a consumer group's workers, or the one
    worker's newest (`all`) when there are none."""
    per_partition = store.latest_per_partition()
    if per_partition:
        return {f"p{partition}": snapshot for partition, snapshot in per_partition.items()}
    single = store.latest()
    return {"all": single} if single is not None else {}


def _service(tree: Settings) -> Reading:
    url = f"{tree.serving.address}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=SERVICE_TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except urllib.error.URLError as exc:
        raise ServiceError(f"{url}: {exc.reason}") from exc
    ready = code == 200
    return (
        ready,
        f"{url}: {'ready' if ready else f'not ready ({code})'}",
        {"url": url, "ready": ready},
    )


def _offsets(offsets: dict[int, int]) -> str:
    return " ".join(f"{p}:{o}" for p, o in sorted(offsets.items())) or "none"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def render(status: SystemStatus) -> Table:
    """The status as a table for a terminal: one row a part, down parts in red."""
    table = Table(
        title=f"lambda-ml status: {'healthy' if status.healthy else 'UNHEALTHY'}",
        show_lines=True,
        title_justify="left",
    )
    table.add_column("part", style="bold", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("what it says")
    for part in status.parts:
        if part.ok:
            state = "[green]ok[/green]"
        elif part.essential:
            state = "[red]down[/red]"
        else:
            state = "[yellow]attention[/yellow]"
        text = f"{part.summary}: {part.error}" if part.error else part.summary
        table.add_row(part.name + (" *" if part.essential else ""), state, escape(text))
    table.caption = "* essential: the exit code is 1 when one of these is down"
    return table
