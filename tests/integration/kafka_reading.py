"""Reading a whole test topic back, for assertions."""

import time
from collections import Counter
from contextlib import suppress

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from models.speed_model import build_speed_model
from streams.schema import InvalidEvent, parse_event


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of `topic`, read from the beginning without a group: once at least
    `expected` have come (or the time is up), on to the topic's end, so that an assertion on
    the count also sees any record beyond the expected ones."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        ends = consumer.end_offsets(partitions)
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline + timeout_s, f"{topic} not read to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset to be written in each partition of `topic`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: o for tp, o in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def labelled_per_partition(bootstrap: str, topic: str, events: int):
    """The labelled events of each partition of the topic, and one speed model that learnt
    them all: what the per-partition snapshots of a consumer group must add up to."""
    single, labelled = build_speed_model(), Counter()
    for record in read_all(bootstrap, topic, events):
        with suppress(InvalidEvent):
            event = parse_event(record.value)
            if event.intent is not None:
                single.learn_one({"text": event.text}, event.intent)
                labelled[record.partition] += 1
    return labelled, single
