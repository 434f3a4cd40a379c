"""Messages for Kafka, written ahead to a local journal and delivered by a background thread.

`Outbox.put` appends to a journal (`streams.journal`) and returns: the caller never waits on
Kafka. A thread reads the journal in order, sends each message with a producer whose
acknowledged writes are on the broker's log (`acks=all`, idempotent, lingering to batch), waits
for the broker's acknowledgement and only then forgets the messages. While Kafka is away,
messages wait in the journal, bounded (the oldest dropped past the bound and counted), and go
out in order once it is back; the outage is logged once as a warning, and its end once.

Delivery is at least once: a message whose acknowledgement was lost, or that was acknowledged
after the journal's position was last written and the process then crashed, is sent again.
Readers keep the first message of a key (the query id).

Each process owns one journal folder, a numbered slot under the outbox's folder (`slot-0`,
`slot-1`, ...), so several processes (a service's workers) can share one folder: a process
takes the first free slot, and also delivers what a process that is gone left in the others.
"""

import itertools
import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from common.settings import KafkaSettings
from streams.journal import Batch, Journal, JournalBusy
from streams.producer import make_producer

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<BH")  # the topic's length, the key's length
BATCH_MESSAGES = 2000
WAIT_TICK_S = 0.5  # how often a wait for Kafka looks up (to stop, or to warn)
WARN_AFTER_S = 5.0  # a batch unacknowledged this long is an outage worth a warning
IDLE_S = 1.0
# What arrives after a quiet spell waits this long for company before it is sent. Under load,
# rounds start at most every ROUND_EVERY_S: each costs a Kafka request, a flush and dozens of
# hand-overs of the interpreter's lock between the outbox's threads and the service's, so one
# round should carry many answers, not a few. An urgent message (a label: the loop's freshness
# waits on it) goes in a round at most LINGER_S after it was put, paced or not.
LINGER_S = 0.05
ROUND_EVERY_S = 0.25
RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class Message:
    """A Kafka message to be: its topic, key and value."""

    topic: str
    key: bytes
    value: bytes

    def encode(self) -> bytes:
        topic = self.topic.encode()
        return _HEADER.pack(len(topic), len(self.key)) + topic + self.key + self.value

    @classmethod
    def decode(cls, raw: bytes) -> "Message":
        topic_length, key_length = _HEADER.unpack_from(raw)
        key_at = _HEADER.size + topic_length
        value_at = key_at + key_length
        return cls(raw[_HEADER.size : key_at].decode(), raw[key_at:value_at], raw[value_at:])


class Outbox:
    """Messages `put` here reach Kafka in order, through `journal`, once `start`ed.

    Parameters
    ----------
    journal
        Where `put` writes; its `fsync_every_s` is also how often the outbox fsyncs it.
    connect
        Makes a producer; called again after a failure.
    adopted
        Journals a process that is gone left behind: delivered first, then closed.
    on_delivered
        Called from the outbox's thread with each topic and its messages Kafka acknowledged.
    on_backlog
        Called from the outbox's thread with the messages waiting, whenever that may change.
    """

    def __init__(
        self,
        journal: Journal,
        connect: Callable[[], KafkaProducer],
        adopted: Sequence[Journal] = (),
        on_delivered: Callable[[str, int], None] = lambda _topic, _count: None,
        on_backlog: Callable[[int], None] = lambda _count: None,
    ) -> None:
        self.journal = journal
        self._connect = connect
        self._journals = [*adopted, journal]
        self._on_delivered = on_delivered
        self._on_backlog = on_backlog
        self._producer: KafkaProducer | None = None
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._stopping = threading.Event()
        self._outage_since: float | None = None
        self._threads = [threading.Thread(target=self._run, name="outbox", daemon=True)]
        if journal.fsync_every_s > 0:
            self._threads.append(
                threading.Thread(target=self._sync, name="outbox-sync", daemon=True)
            )

    def put(self, messages: Sequence[Message], urgent: bool = False) -> bool:
        """Journal `messages` for delivery: True once they are in the journal's file, False if
        it could not take them (counted as dropped). `urgent` ones skip the pacing of rounds."""
        written = self.journal.append([m.encode() for m in messages])
        if urgent:
            self._urgent.set()
        self._wake.set()
        return written

    @property
    def pending(self) -> int:
        """Messages journaled and not yet acknowledged by Kafka (nor dropped)."""
        return sum(j.pending for j in self._journals)

    def start(self) -> "Outbox":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop delivering (what is left stays in the journal for the next owner) and close."""
        self._stopping.set()
        self._wake.set()
        self._urgent.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout_s)
        if self._producer is not None:
            self._close_producer(timeout_s)
        for journal in self._journals:
            journal.close()

    # -- the delivering thread ----------------------------------------------------------------

    def _run(self) -> None:
        delay = WAIT_TICK_S
        round_started = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            journal = next((j for j in self._journals if j.pending), None)
            if journal is None:
                self._release_adopted()
                self._on_backlog(0)
                self._wake.wait(IDLE_S)
                continue
            if journal.pending < BATCH_MESSAGES:
                self._linger(round_started)
            round_started = time.monotonic()
            batch = journal.read(BATCH_MESSAGES)
            delivered, error = self._deliver(batch)
            journal.acknowledge(batch, delivered)
            self._on_backlog(self.pending)
            if error is None:
                self._back()
                delay = WAIT_TICK_S
            elif not self._stopping.is_set():
                self._away(error)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _linger(self, round_started: float) -> None:
        """Wait for company: LINGER_S, or until ROUND_EVERY_S after the last round started,
        whichever is later, but no longer than LINGER_S after an urgent message."""
        until = max(time.monotonic() + LINGER_S, round_started + ROUND_EVERY_S)
        while not self._stopping.is_set() and (left := until - time.monotonic()) > 0:
            if self._urgent.wait(left):
                self._urgent.clear()
                until = min(until, time.monotonic() + LINGER_S)

    def _deliver(self, batch: Batch) -> tuple[int, BaseException | None]:
        """Send the batch and wait for Kafka: how many of its first messages were acknowledged,
        and why the next was not."""
        messages = [Message.decode(raw) for raw in batch.records]
        futures = []
        error: BaseException | None = None
        try:
            if self._producer is None:
                self._producer = self._connect()
            for m in messages:
                futures.append(self._producer.send(m.topic, value=m.value, key=m.key))
        except KafkaError as exc:
            error = exc
        if futures:
            error = self._wait(self._producer) or error  # type: ignore[arg-type]
        delivered = Counter[str]()
        for message, future in zip(messages, futures, strict=False):
            if not future.succeeded():
                error = future.exception or error or KafkaTimeoutError("not acknowledged")
                break
            delivered[message.topic] += 1
        for topic, count in delivered.items():
            self._on_delivered(topic, count)
        if error is not None and self._producer is not None:
            self._close_producer(0)
        return delivered.total(), error

    def _wait(self, producer: KafkaProducer) -> BaseException | None:
        """Wait until every message sent is acknowledged or failed (or the outbox stops)."""
        started = time.monotonic()
        while True:
            try:
                producer.flush(timeout=WAIT_TICK_S)
                return None
            except KafkaTimeoutError as exc:
                if self._stopping.is_set():
                    return exc
                if self._outage_since is None and time.monotonic() - started > WARN_AFTER_S:
                    self._away(exc)
                self._on_backlog(self.pending)

    def _close_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        try:
            producer.close(timeout=timeout_s)  # type: ignore[union-attr]
        except KafkaError as exc:  # messages still in flight: they stay in the journal
            log.info("closing the producer left messages unacknowledged: %s", exc)

    def _away(self, error: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "Kafka does not take the outbox's messages (%s); they wait in the journal %s "
                "(%d now, up to %d bytes) and go out once it is back",
                error,
                self.journal.directory,
                self.pending,
                self.journal.max_bytes,
            )

    def _back(self) -> None:
        if self._outage_since is not None:
            log.info(
                "Kafka takes the outbox's messages again after %.1fs; %d still to send",
                time.monotonic() - self._outage_since,
                self.pending,
            )
            self._outage_since = None

    def _release_adopted(self) -> None:
        """Close the adopted journals once delivered: their folders are free slots again."""
        for journal in self._journals[:-1]:
            journal.close()
        self._journals = self._journals[-1:]

    def _sync(self) -> None:
        while not self._stopping.wait(self.journal.fsync_every_s):
            self.journal.sync()


def claim_journals(
    directory: Path,
    max_bytes: int,
    fsync_every_s: float,
    on_drop: Callable[[int], None] = lambda _count: None,
) -> tuple[Journal, list[Journal]]:
    """The journal of the first free slot of `directory`, and those of the other free slots
    that hold messages (a process that is gone left them): this process delivers them all."""
    slots = itertools.count()
    while True:
        try:
            own = Journal(directory / f"slot-{next(slots)}", max_bytes, fsync_every_s, on_drop)
        except JournalBusy:
            continue
        break
    adopted = []
    for folder in sorted(directory.glob("slot-*")):
        if folder == own.directory:
            continue
        try:
            journal = Journal(folder, max_bytes, fsync_every_s, on_drop)
        except JournalBusy:
            continue
        if journal.pending:
            log.info("delivering %d message(s) left in %s", journal.pending, folder)
            adopted.append(journal)
        else:
            journal.close()
    return own, adopted


def open_outbox(
    directory: Path,
    kafka: KafkaSettings,
    max_bytes: int,
    fsync_every_s: float,
    on_drop: Callable[[int], None] = lambda _count: None,
    on_delivered: Callable[[str, int], None] = lambda _topic, _count: None,
    on_backlog: Callable[[int], None] = lambda _count: None,
) -> Outbox:
    """An outbox on the journals `claim_journals` gives, delivering to `kafka` once started."""
    own, adopted = claim_journals(directory, max_bytes, fsync_every_s, on_drop)

    def connect() -> KafkaProducer:
        return make_producer(
            kafka, client_id="lambda-ml-outbox", bootstrap_timeout_ms=5000, max_block_ms=10_000
        )

    return Outbox(own, connect, adopted, on_delivered, on_backlog)
