"""The served query log: every answered query, and every label `/feedback` takes, as an event
for Kafka, written ahead to a local journal before the answer goes out.

Answered queries go to `KAFKA_TOPIC` as `streams.schema.QueryEvent`s with what was `served`,
labels to `KAFKA_FEEDBACK_TOPIC` as `FeedbackEvent`s, both keyed by query id. The outbox
(`streams.outbox`) delivers them in the background, so Kafka being slow or away never holds
an answer up; what the journal guarantees is said there and in `streams.journal`.
"""

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from serving.metrics import ServiceMetrics
from serving.runtime import ServingEnvironment
from serving.schemas import Label, Prediction, Query
from streams.outbox import Message, Outbox, open_outbox
from streams.schema import FeedbackEvent, QueryEvent, Score, Served

log = logging.getLogger(__name__)

FEEDBACK_SOURCE = "feedback-api"


def new_query_id() -> str:
    """An id for a query that came without one."""
    return uuid.uuid4().hex


def served_event(query: Query, prediction: Prediction, ts: datetime, top_k: int) -> QueryEvent:
    """The event of an answered query: the query as asked, and the answer's `top_k` intents
    and lineage as `served` (never as its `intent`, which is a label)."""
    return QueryEvent(
        query_id=prediction.query_id,
        ts=ts,
        text=query.text,
        user_id=query.user_id,
        locale=query.locale,
        served=Served(
            intent=prediction.intent,
            confidence=prediction.confidence,
            source=prediction.source,
            top_k=[Score(intent=s.intent, p=s.p) for s in prediction.top_k[:top_k]],
            batch_weight=prediction.blend.batch_weight,
            speed_weight=prediction.blend.speed_weight,
            batch_version=prediction.models.batch_version,
            speed_offsets=prediction.models.speed_snapshot_offsets,
        ),
    )


class QueryLog:
    """Answered queries and labels, journaled for their topics through `outbox`."""

    def __init__(
        self,
        outbox: Outbox,
        topic: str,
        feedback_topic: str,
        top_k: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.outbox = outbox
        self.topic = topic
        self.feedback_topic = feedback_topic
        self.top_k = top_k
        self.metrics = metrics

    def answered(self, queries: Sequence[Query], predictions: Sequence[Prediction]) -> None:
        """Journal one request's answers. A failure is logged and counted as dropped, never
        raised: the answers go out whatever becomes of their log."""
        try:
            now = datetime.now(UTC)
            events = [
                served_event(q, p, now, self.top_k)
                for q, p in zip(queries, predictions, strict=True)
            ]
            self._put(self.topic, events)
        except Exception:
            log.exception("%d answered queries could not be journaled", len(predictions))
            self.metrics.query_log_dropped.inc(len(predictions))

    def labelled(self, labels: Sequence[Label]) -> bool:
        """Journal labels for the feedback topic: True once they are in the journal (and so
        will reach Kafka unless dropped past the bound), False if it could not take them."""
        now = datetime.now(UTC)
        events = [
            FeedbackEvent(
                query_id=label.query_id,
                intent=label.intent,
                ts=now,
                source=label.source or FEEDBACK_SOURCE,
            )
            for label in labels
        ]
        return self._put(self.feedback_topic, events, urgent=True)

    def _put(
        self, topic: str, events: Sequence[QueryEvent | FeedbackEvent], urgent: bool = False
    ) -> bool:
        messages = [Message(topic, e.key, e.to_json_bytes()) for e in events]
        written = self.outbox.put(messages, urgent=urgent)
        if written:
            self.metrics.query_log_journaled.labels(topic).inc(len(events))
        return written

    def stop(self) -> None:
        self.outbox.stop()


def open_query_log(environment: ServingEnvironment, metrics: ServiceMetrics) -> QueryLog | None:
    """This worker's query log, delivering to Kafka from now on; None when it is off
    (`SERVING_QUERY_LOG=false`)."""
    serving, kafka = environment.serving, environment.kafka
    if not serving.query_log:
        return None
    outbox = open_outbox(
        serving.query_log_journal_dir,
        kafka,
        serving.query_log_journal_max_bytes,
        serving.query_log_fsync_s,
        on_drop=metrics.query_log_dropped.inc,
        on_delivered=lambda topic, count: metrics.query_log_sent.labels(topic).inc(count),
        on_backlog=metrics.query_log_backlog.set,
    )
    log.info(
        "query log on: answered queries to %s, labels to %s, journaled in %s",
        kafka.topic,
        kafka.feedback_topic,
        outbox.journal.directory,
    )
    return QueryLog(
        outbox.start(), kafka.topic, kafka.feedback_topic, serving.query_log_top_k, metrics
    )
