"""The outbox with a stand-in producer: order, acknowledgement, a broker that is away and comes
back, a send that fails half-way, and journals shared by processes through slots.

The real broker, stopped and restarted under a live service, is tests/integration/
test_query_log.py's.
"""

import logging
import threading
import time

from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from common.settings import KafkaSettings
from streams.journal import Journal
from streams.outbox import ROUND_EVERY_S, Message, Outbox, claim_journals, open_outbox


class StandInProducer:
    """Takes sends like kafka-python's producer and settles them at `flush`: all acknowledged
    while `up`, else failed; `fail_from` fails every send from that count on."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.up = True
        self.fail_from = fail_from
        self.sent: list[Message] = []
        self._pending: list[tuple[Message, Future]] = []
        self.closed = False
        self.flushes = 0

    def send(self, topic, value, key):
        future = Future()
        self._pending.append((Message(topic, key, value), future))
        return future

    def flush(self, timeout=None):
        self.flushes += 1
        for message, future in self._pending:
            if self.up and (self.fail_from is None or len(self.sent) < self.fail_from):
                self.sent.append(message)
                future.success(None)
            else:
                future.failure(KafkaTimeoutError("broker away"))
        self._pending = []

    def close(self, timeout=None):
        self.closed = True


def messages(count: int, start: int = 0, topic: str = "queries") -> list[Message]:
    return [Message(topic, f"q{i}".encode(), f"v{i}".encode()) for i in range(start, start + count)]


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.01)


def test_a_message_round_trips_through_its_encoding():
    message = Message("queries.feedback", b"q-\xc3\xa9", b'{"intent":"alarm"}')
    assert Message.decode(message.encode()) == message


def test_messages_reach_the_producer_in_order_and_leave_the_journal(tmp_path):
    producer = StandInProducer()
    delivered: list[tuple[str, int]] = []
    journal = Journal(tmp_path, max_bytes=1 << 20)
    outbox = Outbox(journal, lambda: producer, on_delivered=lambda t, n: delivered.append((t, n)))
    outbox.start()
    outbox.put(messages(3))
    outbox.put(messages(2, start=3, topic="queries.feedback"))
    wait_for(lambda: outbox.pending == 0)
    outbox.stop()
    assert producer.sent == messages(3) + messages(2, start=3, topic="queries.feedback")
    assert sum(n for t, n in delivered if t == "queries") == 3
    assert sum(n for t, n in delivered if t == "queries.feedback") == 2
    assert list(tmp_path.glob("*.seg")) == []


def test_a_steady_trickle_goes_out_in_rounds_spaced_apart_not_one_per_message(tmp_path):
    """Each round costs a Kafka request and lock hand-overs in the service's process: a message
    every 10 ms goes out in rounds at least ROUND_EVERY_S apart, every one of them delivered."""
    producer = StandInProducer()
    outbox = Outbox(Journal(tmp_path, max_bytes=1 << 20), lambda: producer).start()
    started = time.monotonic()
    for i in range(100):
        outbox.put(messages(1, start=i))
        time.sleep(0.01)
    wait_for(lambda: outbox.pending == 0)
    elapsed = time.monotonic() - started
    outbox.stop()
    assert producer.sent == messages(100)
    assert 1 <= producer.flushes <= elapsed / ROUND_EVERY_S + 1


def test_an_urgent_message_is_not_held_back_by_the_pacing_of_rounds(tmp_path, monkeypatch):
    """A label put while rounds are paced goes out at once, with what waited before it; with
    rounds 30 s apart, neither would reach the producer within the 10 s waited for here."""
    monkeypatch.setattr("streams.outbox.ROUND_EVERY_S", 30.0)
    producer = StandInProducer()
    outbox = Outbox(Journal(tmp_path, max_bytes=1 << 20), lambda: producer).start()
    outbox.put(messages(1))
    wait_for(lambda: producer.sent == messages(1))  # the first round: nothing to pace yet
    outbox.put(messages(1, start=1))
    outbox.put(messages(1, start=2, topic="queries.feedback"), urgent=True)
    wait_for(lambda: outbox.pending == 0, timeout_s=10)
    outbox.stop()
    assert producer.sent == messages(2) + messages(1, start=2, topic="queries.feedback")
    assert producer.flushes == 2


def test_while_the_broker_is_away_messages_wait_then_go_out_in_order(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="streams.outbox")
    producer = StandInProducer()
    producer.up = False
    reachable = threading.Event()

    def connect():
        if not reachable.is_set():
            raise KafkaTimeoutError("Unable to bootstrap")
        return producer

    outbox = Outbox(Journal(tmp_path, max_bytes=1 << 20), connect).start()
    outbox.put(messages(5))
    wait_for(lambda: "Kafka does not take" in caplog.text)
    outbox.put(messages(5, start=5))
    reachable.set()  # a producer now, but the broker does not acknowledge yet
    time.sleep(0.3)
    assert outbox.pending == 10 and producer.sent == []
    producer.up = True
    wait_for(lambda: outbox.pending == 0, timeout_s=30)
    outbox.stop()
    assert producer.sent == messages(10)
    assert caplog.text.count("Kafka does not take") == 1
    assert "Kafka takes the outbox's messages again" in caplog.text


def test_after_a_send_fails_half_way_the_rest_goes_again_and_nothing_twice(tmp_path):
    first = StandInProducer(fail_from=4)
    second = StandInProducer()
    producers = iter([first, second])
    outbox = Outbox(Journal(tmp_path, max_bytes=1 << 20), lambda: next(producers))
    outbox.put(messages(10))
    outbox.start()
    wait_for(lambda: outbox.pending == 0, timeout_s=30)
    outbox.stop()
    assert first.sent == messages(4) and first.closed
    assert second.sent == messages(6, start=4)


def test_each_process_takes_a_free_slot_and_a_freed_one_with_what_it_holds(tmp_path):
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    left = open_outbox(tmp_path, kafka, 1 << 20, 1.0)
    left.put(messages(4))
    left.stop()  # never started: all four still journaled

    again = open_outbox(tmp_path, kafka, 1 << 20, 1.0)
    assert again.journal.directory == tmp_path / "slot-0"
    assert again.pending == 4
    other = open_outbox(tmp_path, kafka, 1 << 20, 1.0)  # slot-0 is held: the next one
    assert other.journal.directory == tmp_path / "slot-1"
    assert other.pending == 0
    other.stop()
    again.stop()


def test_journals_no_process_holds_are_adopted_and_delivered(tmp_path):
    held, _ = claim_journals(tmp_path, 1 << 20, 1.0)  # slot-0, held throughout
    for slot, start in ((1, 0), (2, 3)):  # two workers that are gone
        gone = Journal(tmp_path / f"slot-{slot}", max_bytes=1 << 20)
        gone.append([m.encode() for m in messages(3, start=start)])
        gone.close()

    own, adopted = claim_journals(tmp_path, 1 << 20, 1.0)
    assert own.directory == tmp_path / "slot-1" and own.pending == 3
    assert [j.directory for j in adopted] == [tmp_path / "slot-2"]
    producer = StandInProducer()
    outbox = Outbox(own, lambda: producer, adopted).start()
    outbox.put(messages(2, start=6))
    wait_for(lambda: outbox.pending == 0)
    # The adopted journal is let go once delivered: another process can take its slot.
    wait_for(lambda: claim_journals(tmp_path, 1 << 20, 1.0)[0].directory == tmp_path / "slot-2")
    outbox.stop()
    held.close()
    assert sorted(producer.sent, key=lambda m: m.key) == sorted(messages(8), key=lambda m: m.key)
    assert [m for m in producer.sent if m in messages(3)] == messages(3)  # each journal in order
    assert [m for m in producer.sent if m in messages(3, start=3)] == messages(3, start=3)
