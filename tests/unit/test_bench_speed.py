"""The speed benchmark's in-process contenders over a consumer group in memory: both join the
group before their clocks start and read the whole topic, the speed layer on the champion, and
with its labels on the feedback topic."""

from contextlib import contextmanager

import pytest

import bench.speed as speed_bench
from streams.consumer import EventReader
from tests.unit.fake_kafka import KAFKA, FakeGroup, FakeLabels, FakeProducer, FakeTopic
from tests.unit.test_speed_layer import a_champion, label_every

EVENTS = 120


@pytest.fixture
def one_partition(monkeypatch):
    """`event_reader` over a one-partition topic in memory, a fresh group each time."""
    topic = FakeTopic(partitions=1, events=EVENTS, unlabelled_every=None)

    @contextmanager
    def event_reader(kafka, group_id, stage, **consumer):
        yield EventReader(FakeGroup(topic).consumer(), FakeProducer(), KAFKA, stage)

    monkeypatch.setattr(speed_bench, "event_reader", event_reader)
    return topic


def test_the_speed_layer_run_reads_every_event_on_the_champion(one_partition, tmp_path):
    champion = a_champion("1", {0: 0})
    run, layer = speed_bench.speed_run(KAFKA, "g", EVENTS, tmp_path, champion, alpha=0.1)
    assert run.events == EVENTS and run.seconds > 0
    assert layer.state.scores.batch.seen == EVENTS
    assert run.scores is layer.state.scores.speed and run.scores.seen == EVENTS


def test_the_river_run_reads_every_event(one_partition):
    run = speed_bench.river_run(KAFKA, EVENTS, alpha=0.1)
    assert run.events == EVENTS and run.scores.seen == EVENTS


def test_the_feedback_topic_run_learns_every_late_label_on_the_champion(monkeypatch, tmp_path):
    topic = FakeTopic(partitions=1, events=EVENTS, unlabelled_every=1)
    labels = FakeLabels(1)
    pairs = label_every(topic, labels, every=3)

    @contextmanager
    def event_reader(kafka, group_id, stage, feedback=False, **consumer):
        group = FakeGroup(topic, labels)
        yield EventReader(group.consumer(), FakeProducer(), KAFKA, stage, feedback=feedback)

    monkeypatch.setattr(speed_bench, "event_reader", event_reader)
    champion = a_champion("1", {0: 0})
    run, layer = speed_bench.speed_run(
        KAFKA, "g", len(pairs[0]), tmp_path, champion, 0.1, feedback=True
    )
    assert run.events == len(pairs[0]) == layer.state.labels_joined and run.seconds > 0
    assert layer.state.scores.batch.seen == run.scores.seen == len(pairs[0])
    assert layer.metrics()["queries_awaiting_label"] == EVENTS - len(pairs[0])
