"""The experiment tracking UI, as a person opens it in a browser after a batch retrain.

A retrain runs against the project's real MLflow server (SQLite store, served artifacts); the
server is then stopped and started again on the same store, and headless Chromium renders the
UI: the experiment from the link the project gives (`pipelines.tracking.runs_page`), which opens
on the training runs, each with the datasets it was trained and judged on, then the registry.
MLflow's UI is a React single-page app, so the page is checked on the DOM Chromium serialises
after the app has fetched and rendered (`--dump-dom` with a virtual-time budget:
virtual time stands still while fetches are pending, so the budget is reached only once the
page is idle). The screenshots go to reports/screenshots/.

Chromium is Debian's `chromium` package, installed by `make system-deps`
(scripts/install-system-deps.sh); without it the test fails, it is never skipped.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from random import Random

import pytest

from common.settings import BatchSettings, MlflowSettings
from models.registry import CHAMPION, fetch_champion
from pipelines.batch.retrain import RetrainResult, retrain
from pipelines.provenance import PROJECT_ROOT
from pipelines.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, runs_page, tracking_client
from streams.archiver import write_flush
from streams.consumer import Consumed
from streams.dataset import CLINC150_DATA, load_dataset
from streams.schema import QueryEvent
from tests.integration.conftest import throwaway_mlflow

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCREENSHOTS = PROJECT_ROOT / "reports" / "screenshots"
EXPERIMENT = "lambda-ml"
MODEL = "intent-classifier"
RUN_NAME = "batch-retrain"
INTENTS = 15
PER_INTENT = 100
ATTEMPTS = 3  # renders of one page before the test gives up on it
VIRTUAL_TIME_MS = 15_000
WINDOW = "1920,1080"  # wide enough for the runs table beside MLflow's assistant panel


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; a clear failure (not a skip) when it is not installed."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "chromium is not installed, so the MLflow UI cannot be checked: run `make system-deps`"
            " (scripts/install-system-deps.sh: apt-get install chromium, as root)",
            pytrace=False,
        )
    return found


@dataclass(frozen=True)
class Rendered:
    """One page as Chromium rendered it: its title, its visible text, the text of each table
    row (`role="row"`) by row key, the elements' `title` attributes, and the screenshot file.

    A grid that splits one row over pinned and scrolling parts (MLflow's runs table, an AG
    Grid) gives each part the same `row-id` (there: the run id); their texts are joined. Rows
    without one are keyed `#0`, `#1`, ... in document order.
    """

    url: str
    title: str
    text: str
    rows: dict[str, str]
    titles: set[str]
    screenshot: Path
    attempts: int
    seconds: float

    def excerpt(self, chars: int = 1500) -> str:
        return f"{self.url} (title {self.title!r}) rendered:\n{self.text[:chars]}"


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}  # fmt: skip
_HIDDEN = {"script", "style", "noscript", "template"}


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()  # also folds the &nbsp; in "@ champion"


class _DomText(HTMLParser):
    """Visible text of a serialised DOM, overall and per `role="row"` element (by row key)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.parts: list[str] = []
        self.rows: dict[str, str] = {}
        self.titles: set[str] = set()
        self._stack: list[str] = []
        self._hidden = 0
        self._in_title = False
        self._open_rows: list[tuple[int, str]] = []  # depth and key of each open row
        self._row_parts: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("title"):
            self.titles.add(attributes["title"] or "")
        if tag in _VOID:
            return
        self._stack.append(tag)
        if tag in _HIDDEN:
            self._hidden += 1
        if tag == "title" and not self.title:  # the document's, not an SVG icon's
            self._in_title = True
        if attributes.get("role") == "row":
            key = attributes.get("row-id") or f"#{len(self.rows) + len(self._open_rows)}"
            self._open_rows.append((len(self._stack), key))
            self._row_parts.append([])

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self._stack:
            return
        while self._stack:  # close anything left open inside (lenient, like a browser)
            depth = len(self._stack)
            closed = self._stack.pop()
            if closed in _HIDDEN:
                self._hidden -= 1
            if closed == "title":
                self._in_title = False
            if self._open_rows and self._open_rows[-1][0] == depth:
                _, key = self._open_rows.pop()
                text = _squash(" ".join(self._row_parts.pop()))
                self.rows[key] = _squash(f"{self.rows.get(key, '')} {text}")
            if closed == tag:
                break

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._hidden:
            return
        self.parts.append(data)
        for parts in self._row_parts:
            parts.append(data)


def _run_chromium(binary: str, url: str, screenshot: Path, timeout: float = 60.0) -> str:
    """Render `url` once in a fresh profile: save a screenshot, return the serialised DOM.

    Chromium runs in its own process group, which is killed afterwards whatever happened, so
    no browser, renderer or zygote process outlives the call.
    """
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # root in CI and containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            # no calls home: this machine's closed network refuses them and they stall the page
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            f"--window-size={WINDOW}",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        try:
            dom, errors = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"chromium did not finish rendering {url} within {timeout:g}s")
        finally:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0 or not dom.strip():
        tail = "\n".join(errors.splitlines()[-15:])
        pytest.fail(f"chromium failed on {url} (exit {process.returncode}):\n{tail}")
    return dom


def render(binary: str, url: str, screenshot: Path, ready: list[str]) -> Rendered:
    """The page at `url` once every string in `ready` is in its text (or after ATTEMPTS tries).

    A render normally suffices; the retries only absorb a render that stopped before the
    app's data arrived. The caller's assertions then say what is missing.
    """
    page: Rendered | None = None
    started = time.monotonic()
    for attempt in range(1, ATTEMPTS + 1):
        parser = _DomText()
        parser.feed(_run_chromium(binary, url, screenshot))
        parser.close()
        page = Rendered(
            url=url,
            title=_squash(parser.title),
            text=_squash(" ".join(parser.parts)),
            rows=parser.rows,
            titles=parser.titles,
            screenshot=screenshot,
            attempts=attempt,
            seconds=time.monotonic() - started,
        )
        if all(marker in page.text for marker in ready):
            break
        time.sleep(1.0)
    assert page is not None
    return page


# --- the retrain and the server ---------------------------------------------------------------


def write_master_dataset(root: Path) -> int:
    """A small labelled history: PER_INTENT utterances of each of INTENTS intents, one flush.

    Shuffled before timestamps are given, so the newest-slice holdout covers all intents.
    """
    by_intent: dict[str, list] = defaultdict(list)
    for example in load_dataset(CLINC150_DATA).examples:
        by_intent[example.intent].append(example)
    chosen = sorted(by_intent)[:INTENTS]
    examples = [e for intent in chosen for e in by_intent[intent][:PER_INTENT]]
    Random(7).shuffle(examples)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    events = [
        Consumed(
            event=QueryEvent(
                query_id=f"ui-{n}",
                ts=start + timedelta(seconds=n),
                text=e.text,
                intent=e.intent,
            ),
            partition=0,
            offset=n,
        )
        for n, e in enumerate(examples)
    ]
    write_flush(root, 0, 0, len(events) - 1, events)
    return len(events)


@dataclass(frozen=True)
class Tracked:
    settings: MlflowSettings
    result: RetrainResult
    experiment_id: str


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    """A retrain recorded by a real local MLflow server, which is then restarted on its store.

    Always a local server in a throwaway home (never one from MLFLOW_TRACKING_URI): the UI
    must show exactly this run and this registry, and the restart needs a server we own.
    """
    home = tmp_path_factory.mktemp("mlflow-ui")
    server = throwaway_mlflow(home / "mlflow", experiment=EXPERIMENT, registered_model=MODEL)
    settings = server.settings
    master = home / "master"
    rows = write_master_dataset(master)
    batch = BatchSettings(
        master_dir=master,
        holdout_fraction=0.1,
        min_accuracy=0.5,
        min_train_events=100,
        lock_path=home / "retrain.lock",
    )
    try:
        server.up()
        result = retrain(batch, settings, topic="queries")
        assert result.promoted, result.reason
        assert int(result.lineage["rows"]) == rows
        # A restart on the same SQLite store and artifact folder: what the UI shows next
        # must come from disk, not from the first server's memory.
        assert server.down()
        assert server.up()
        client = tracking_client(settings)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        assert experiment is not None
        yield Tracked(settings, result, experiment.experiment_id)
    finally:
        server.down()


# --- the test ---------------------------------------------------------------------------------


def test_the_ui_shows_the_experiment_its_runs_and_the_champion(chromium: str, tracked: Tracked):
    settings, result = tracked.settings, tracked.result
    champion = fetch_champion(tracking_client(settings), MODEL)
    assert champion is not None and champion.version == result.version == "1"
    assert champion.run_id == result.run_id
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    client = tracking_client(settings)
    experiment = client.get_experiment(tracked.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    inputs = client.get_run(result.run_id).inputs.dataset_inputs
    digests = {i.dataset.name: i.dataset.digest for i in inputs}

    runs = render(
        chromium,
        runs_page(settings.uri, tracked.experiment_id),
        SCREENSHOTS / "mlflow-experiment.png",
        ready=[RUN_NAME],
    )
    # The training runs, not the GenAI overview (traces, tokens) MLflow 3 opens by default.
    assert runs.title.startswith("Runs"), runs.excerpt()
    assert "Token Usage" not in runs.text, runs.excerpt()
    assert EXPERIMENT in runs.text, runs.excerpt()
    assert "1 matching run" in runs.text, runs.excerpt()
    assert [key for key, row in runs.rows.items() if RUN_NAME in row] == [result.run_id], runs.rows
    row = runs.rows[result.run_id]
    # the run's row links it to the version it registered (the "Models" column), and shows
    # what it was trained and judged on (the "Dataset" column)
    assert f"{MODEL} v{result.version}" in row, row
    assert f"history ({digests['history']}) training" in row, row
    assert f"holdout ({digests['holdout']}) evaluation" in row, row

    model = render(
        chromium,
        f"{settings.uri}/#/models/{MODEL}",
        SCREENSHOTS / "mlflow-model.png",
        ready=[f"Version {result.version}", CHAMPION],
    )
    assert model.title == f"Model: {MODEL} - MLflow", model.excerpt()
    version_rows = [row for row in model.rows.values() if f"Version {result.version}" in row]
    assert len(version_rows) == 1, model.excerpt()
    row = version_rows[0]
    assert f"@ {CHAMPION}" in row, row  # the alias tag, on the version's row
    assert f"holdout_first_seen_accuracy : {result.scores.first_seen_accuracy:.4f}" in row, row
    assert CHAMPION in model.titles, model.excerpt()

    for page in (runs, model):
        print(f"{page.url}: {page.attempts} render(s), {page.seconds:.1f}s -> {page.screenshot}")
        assert page.screenshot.stat().st_size > 10_000, f"{page.screenshot} looks empty"
        assert page.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", page.screenshot
