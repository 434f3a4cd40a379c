"""10,000 fuzzed events through `publish`, the speed layer and the archiver on the real broker.

Every invalid event must reach the dead-letter topic once per stage that reads it, with a reason
naming its fault; every valid one must be published, learnt (when labelled) and archived; and
the long-running jobs must still be running when the stream is done.
"""

import json
from collections import Counter

import pytest

from models.snapshot import SnapshotStore, merge_snapshots
from streams.dead_letters import MAX_DEAD_LETTER_BYTES, ORIGINAL_BYTES_HEADER
from streams.master_dataset import history
from streams.producer import make_producer
from tests.dead_letter_headers import dead_letter_reason
from tests.fuzz_events import FuzzEvent, fuzz_corpus
from tests.integration.cli_processes import RunningJobs, caught_up, run_to_end, stream_jobs_env
from tests.integration.kafka_reading import end_offsets, read_all

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SCENARIO = "10,000 fuzzed events"


@pytest.fixture(scope="module")
def corpus() -> list[FuzzEvent]:
    return fuzz_corpus()


def stages_of(dead: list) -> Counter:
    return Counter(dead_letter_reason(r.headers)["dlq.stage"] for r in dead)


def unexplained(dead: list, corpus: list[FuzzEvent], stage: str) -> list[str]:
    """Dead letters of `stage` whose bytes are not an invalid event of the corpus, or whose
    reason does not name that event's fault, or that were cut without saying so."""
    reasons: dict[bytes, set[str]] = {}
    for event in corpus:
        if not event.valid:
            reasons.setdefault(event.raw[:MAX_DEAD_LETTER_BYTES], set()).add(event.reason)
    wrong = []
    for record in dead:
        headers = dead_letter_reason(record.headers)
        if headers["dlq.stage"] != stage:
            continue
        expected = reasons.get(record.value)
        if expected is None or not any(phrase in headers["dlq.reason"] for phrase in expected):
            wrong.append(f"{record.value[:80]!r}: {headers['dlq.reason']}")
        if len(record.value) == MAX_DEAD_LETTER_BYTES and ORIGINAL_BYTES_HEADER not in headers:
            wrong.append(f"{record.value[:80]!r}: cut without {ORIGINAL_BYTES_HEADER}")
    return wrong


def test_publish_dead_letters_every_invalid_event_and_sends_every_valid_one(
    kafka, corpus, tmp_path, reliability
):
    settings = kafka.fresh_settings(partitions=3)
    events_file = tmp_path / "fuzzed.jsonl"
    events_file.write_bytes(b"".join(e.raw + b"\n" for e in corpus))
    env = stream_jobs_env(settings, tmp_path)
    run_to_end(["publish", str(events_file)], env)

    valid = [e for e in corpus if e.valid]
    invalid = [e for e in corpus if not e.valid]
    published = read_all(settings.bootstrap, settings.topic, len(valid))
    dead = read_all(settings.bootstrap, settings.dlq_topic, len(invalid))
    wrong = unexplained(dead, corpus, "produce")
    reliability(SCENARIO, "publish: invalid events", len(invalid))
    reliability(SCENARIO, "publish: dead letters", len(dead), f"= {len(invalid):,}")
    reliability(SCENARIO, "publish: dead letters without the right reason", len(wrong), "= 0")
    reliability(SCENARIO, "publish: valid events published", len(published), f"= {len(valid):,}")
    assert wrong == []
    assert len(dead) == len(invalid)
    assert Counter(r.value for r in published) == Counter(e.raw for e in valid)


def test_speed_and_archive_dead_letter_the_invalid_and_keep_the_valid_without_exiting(
    kafka, corpus, tmp_path, reliability
):
    settings = kafka.fresh_settings(partitions=3)
    raw_producer = make_producer(settings)  # a foreign producer: nothing checked on the way in
    for event in corpus:
        raw_producer.send(settings.topic, value=event.raw)
    raw_producer.close()
    ends = end_offsets(settings.bootstrap, settings.topic)

    snapshots, master = tmp_path / "snapshots", tmp_path / "master"
    env = stream_jobs_env(settings, tmp_path)
    store = SnapshotStore(snapshots)
    with RunningJobs({"speed": ["speed"], "archive": ["archive"]}, env, tmp_path / "logs") as jobs:
        jobs.wait_until(lambda: caught_up(store, master, ends), "through the stream", timeout_s=180)
        still_running = sorted(set(jobs.jobs) - set(jobs.exited()))

    valid = [e for e in corpus if e.valid]
    invalid = [e for e in corpus if not e.valid]
    dead = read_all(settings.bootstrap, settings.dlq_topic, 2 * len(invalid))
    per_stage = stages_of(dead)
    archived = history(master).to_table(columns=["query_id", "intent"])
    snapshot = merge_snapshots(store.latest_per_partition())
    learnt_intents = set(snapshot.model.classes)
    bodies = [json.loads(e.raw) for e in valid]
    unknown = {
        b["intent"] for e, b in zip(valid, bodies, strict=True) if e.kind == "unknown intent"
    }
    for stage in ("speed", "archive"):
        wrong = unexplained(dead, corpus, stage)
        reliability(SCENARIO, f"{stage}: dead letters", per_stage[stage], f"= {len(invalid):,}")
        reliability(SCENARIO, f"{stage}: dead letters without the right reason", len(wrong), "= 0")
        assert wrong == []
        assert per_stage[stage] == len(invalid)
    labelled = sum(e.labelled for e in valid)
    reliability(
        SCENARIO, "speed: events learnt", snapshot.events_learnt, f"= {labelled:,} labelled"
    )
    reliability(SCENARIO, "archive: events archived", archived.num_rows, f"= {len(valid):,} valid")
    reliability(SCENARIO, "jobs still running at the end", len(still_running), "= 2")
    reliability(
        SCENARIO, "jobs' exit codes after SIGTERM", str(sorted(jobs.codes.values())), "[0, 0]"
    )
    assert still_running == ["archive", "speed"]
    assert jobs.codes == {"speed": 0, "archive": 0}, jobs.logs
    assert snapshot.events_learnt == labelled
    assert unknown <= learnt_intents
    assert Counter(archived["query_id"].to_pylist()) == Counter(b["query_id"] for b in bodies)
