"""Reading a whole test topic back, for assertions."""

import time

from kafka import KafkaConsumer
from kafka.structs import TopicPartition


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
