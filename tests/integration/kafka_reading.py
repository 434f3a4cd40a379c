"""Reading a whole test topic back, for assertions."""

from kafka import KafkaConsumer
from kafka.structs import TopicPartition


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of `topic` (at least `expected`), read from the beginning without a group."""
    import time

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
        return records
    finally:
        consumer.close()
