"""JSON log lines: one object a line, with the job, the level, the time, the logger, the message
and the call's `extra` fields; stray stderr output wrapped so the stream stays parseable."""

import io
import json
import logging
from datetime import datetime

from common.logs import JsonFormatter, QuietSlowClientSteps, _StrayLines


def test_a_record_becomes_one_json_line_with_its_extra_fields_and_traceback():
    logger = logging.getLogger("test.logs")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("archive"))
    logger.addHandler(handler)
    try:
        logger.warning("flushed %d events", 12, extra={"partition": 3, "offsets": {0: 5}})
        try:
            raise ValueError("bad\nrow")
        except ValueError:
            logger.exception("flush failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job"] == "archive" and first["level"] == "WARNING"
    assert first["logger"] == "test.logs" and first["message"] == "flushed 12 events"
    assert first["partition"] == 3 and first["offsets"] == {"0": 5}
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert "args" not in first and "exception" not in first
    assert second["level"] == "ERROR" and "ValueError: bad\nrow" in second["exception"]


def test_stray_lines_on_stderr_are_wrapped_and_json_lines_pass_through():
    stream = io.StringIO()
    stray = _StrayLines(stream, "retrain")
    stray.write("Created version '2' of ")
    assert stream.getvalue() == ""  # nothing until the line ends
    stray.write('model.\n{"level": "INFO", "message": "as is"}\n')
    wrapped, kept = (json.loads(line) for line in stream.getvalue().splitlines())
    assert wrapped["message"] == "Created version '2' of model." and wrapped["job"] == "retrain"
    assert wrapped["logger"] == "stderr"
    assert kept == {"level": "INFO", "message": "as is"}


def test_the_kafka_clients_slow_step_warnings_show_at_debug_only():
    slow = "Task <Task 1> ran for 0.170s (>0.100s threshold). It is blocking the event loop"
    record = logging.LogRecord("kafka.net.selector", logging.WARNING, "", 0, slow, None, None)
    other = logging.LogRecord("kafka.net.selector", logging.WARNING, "", 0, "gone", None, None)
    quiet, root = QuietSlowClientSteps(), logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        assert not quiet.filter(record) and quiet.filter(other)
        root.setLevel(logging.DEBUG)
        assert quiet.filter(record)
    finally:
        root.setLevel(level)
