"""Log output for people and for log shippers: Rich lines on a terminal, or one JSON object per
line (`LOG_FORMAT=json`) that a collector can parse without guessing at the layout.

Every JSON line names the job, the level, the time, the logger and the message, and carries the
`extra` fields the call gave, so a log search can filter on them:

>>> record = logging.LogRecord("pipelines.batch.retrain", logging.INFO, "", 0, "done", None, None)
>>> record.version = "3"
>>> line = json.loads(JsonFormatter("retrain").format(record))
>>> line["job"], line["level"], line["logger"], line["message"], line["version"]
('retrain', 'INFO', 'pipelines.batch.retrain', 'done', '3')
"""

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, TextIO

LogFormat = Literal["rich", "json"]

# What every LogRecord has: the rest of a record's attributes are the call's `extra` fields.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; `drop` names record attributes that another
    library's formatting added and that say nothing on their own."""

    def __init__(self, job: str, drop: Iterable[str] = ()) -> None:
        super().__init__()
        self.job = job
        self.drop = _RECORD_ATTRIBUTES | frozenset(drop)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "job": self.job,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {key: value for key, value in vars(record).items() if key not in self.drop}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a test runner swaps it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _StrayLines:
    """Stands in for `sys.stderr` in JSON mode: what libraries print there themselves (not
    through logging) becomes JSON lines too, so that the stream stays parseable."""

    def __init__(self, stream: TextIO, job: str) -> None:
        self.stream = stream
        self.job = job
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.stream.write((line if _is_json(line) else self._wrap(line)) + "\n")
        return len(text)

    def _wrap(self, line: str) -> str:
        record = logging.LogRecord("stderr", logging.INFO, "", 0, line, None, None)
        return JsonFormatter(self.job).format(record)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def _is_json(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("uncaught").critical("%s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


_installed: list[logging.Handler] = []


class QuietSlowClientSteps(logging.Filter):
    """kafka-python warns each time one step of its network loop held the thread over 0.1 s
    ("... It is blocking the event loop"): routine in a job whose model work runs beside its
    Kafka clients, hundreds of lines a run, so those show only when the log level is DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "blocking the event loop" not in record.getMessage():
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_QUIET_SLOW_CLIENT_STEPS = QuietSlowClientSteps()


def configure(level: str, log_format: LogFormat, job: str) -> None:
    """Send this process's log to stderr, as Rich lines or as JSON lines of `job` (then
    anything else written to stderr, and an uncaught exception, becomes JSON lines too).

    Called again (commands run in one process, as tests do), it replaces the handler it added
    and leaves the others on the root logger alone.
    """
    handler: logging.Handler
    if log_format == "json":
        handler = _Stderr()
        handler.setFormatter(JsonFormatter(job))
        if not isinstance(sys.stderr, _StrayLines):
            sys.stderr = _StrayLines(sys.stderr, job)
        sys.excepthook = _log_uncaught
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed.append(handler)
    logging.getLogger("kafka.net.selector").addFilter(_QUIET_SLOW_CLIENT_STEPS)


def format_as_json(loggers: Iterable[str], job: str, drop: Iterable[str] = ()) -> None:
    """Give the handlers another library set up on `loggers` ("" is the root) the JSON
    formatter, keeping where they write."""
    formatter = JsonFormatter(job, drop)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
