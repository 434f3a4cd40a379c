"""The real server (`bentoml serve`) against hostile HTTP: never a 5xx, and it keeps serving.

One server for the module, with a champion registered in the real MLflow server and a speed
snapshot, so good requests get a blended answer. Against it: requests that schemathesis
generates from the service's own OpenAPI schema, oversized bodies and headers, bodies whose
Content-Length lies, slow clients (slowloris) while a normal client keeps asking, and clients
that never read their answer or go away mid-request. Every answer must be a clear 4xx or a 2xx
(or the server closing a connection it cannot use); afterwards the same server process must
still be ready and answer normally.
"""

import asyncio
import contextlib
import json
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import bentoml
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from common.processes import ChildProcess
from serving.service import IntentClassifier
from tests.integration.live_service import (
    fit_batch,
    register,
    running_traffic,
    serving_process,
    training_rows,
    wait_until,
    write_snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SCENARIO = "HTTP: schemathesis over the OpenAPI, oversized bodies, slow clients"
BODY_TIMEOUT_S = 5.0  # SERVING_BODY_TIMEOUT_S of the server: a stalled body is a 408 by then
ANSWER_BOUND_S = 30.0  # how long any client here waits for an answer before calling it a hang
FUZZ_EXAMPLES = 150  # per operation, in schemathesis's fuzzing phase
GOOD = b'{"text": "wake me up at seven tomorrow"}'
ENDPOINTS = ("/predict", "/predict_batch", "/feedback")
GONE = 20  # clients gone after a whole request, and as many gone mid-body


@dataclass
class Live:
    server: ChildProcess
    version: str
    pids: set[int]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@pytest.fixture(scope="module")
def live(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One worker serving a registered champion blended with a fresh speed snapshot."""
    tmp_path = tmp_path_factory.mktemp("http-abuse")
    rows = training_rows()
    name = f"http-abuse-{uuid.uuid4().hex[:8]}"
    version = register(mlflow_server, name, fit_batch(rows), {0: 100})
    write_snapshot(tmp_path / "snapshots", rows, {0: 110})
    server = serving_process(
        mlflow_server,
        name,
        tmp_path / "snapshots",
        tmp_path,
        workers=1,
        SERVING_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    )
    with server:
        server.wait_ready(timeout_s=180)

        def blending() -> bool:  # ready means some model answers; the champion may still load
            body = httpx.post(f"{server.url}/predict", content=GOOD, timeout=10).json()
            return body["source"] == "blend" and body["models"]["batch_version"] == version

        wait_until(blending)
        yield Live(server, version, {p.pid for p in server.processes()})


def server_errors_logged(live: Live) -> int:
    """Exceptions logged with a traceback: those that escaped the app (uvicorn logs each,
    answered or not) and those BentoML caught in an endpoint. A request refused for its own
    fault is answered with a 4xx and logs nothing."""
    assert live.server.log_path is not None
    log = live.server.log_path.read_text(errors="replace")
    return log.count("Exception in ASGI application") + log.count("Exception on /")


def counts(counter: Counter) -> str:
    """`200: 31, 400: 12` for the report."""
    return ", ".join(f"{key}: {n}" for key, n in sorted(counter.items(), key=str))


def assert_still_serving(live: Live, reliability, stage: str) -> None:
    """Same processes as at the start (none died or was restarted), ready, answering 200."""
    assert live.server.process is not None and live.server.process.poll() is None
    alive = {p.pid for p in live.server.processes() if p.is_running()}
    reliability(
        SCENARIO, f"{stage}: server processes replaced or gone", len(live.pids - alive), "= 0"
    )
    assert alive >= live.pids
    ready = httpx.get(f"{live.url}/readyz", timeout=10).status_code
    answer = httpx.post(f"{live.url}/predict", content=GOOD, timeout=10)
    reliability(SCENARIO, f"{stage}: /readyz afterwards", ready, "= 200")
    assert ready == 200
    assert answer.status_code == 200 and answer.json()["source"] == "blend"
    errors = server_errors_logged(live)
    reliability(SCENARIO, f"{stage}: exceptions in the server log", errors, "= 0")
    assert errors == 0


# --- schemathesis over the served OpenAPI schema ------------------------------------------

# The schema is built where BentoML builds the one it serves: the operations to test must be
# known when tests are collected, before the server runs; `served_schema` checks both are equal.
SPEC = json.loads(json.dumps(cast(bentoml.Service, IntentClassifier).openapi_spec.asdict()))
api = schemathesis.openapi.from_dict(SPEC)
OPERATIONS = [result.ok() for result in api.get_all_operations()]


@pytest.fixture(scope="module")
def served_schema(live: Live) -> None:
    served = httpx.get(f"{live.url}/docs.json", timeout=10)
    assert served.status_code == 200 and served.json() == SPEC


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_generated_requests_get_no_server_error(
    operation: APIOperation, live: Live, served_schema, session, reliability
):
    """schemathesis's coverage cases (edge lengths, missing and mistyped fields, undeclared
    methods and content types), then fuzzed valid and invalid input: never a 5xx.

    BentoML's schema documents errors as `{"error": str, "detail": str}` while its validation
    (and this service) answer `detail` as a list of `{loc, msg}`; it also leaves out the runtime
    limits (413 over `SERVING_MAX_BATCH`, whitespace-only texts). So success bodies are held to
    the schema, and error bodies to the shape the service documents instead. (schemathesis's
    own pytest integration is not used: under pytest 9.2 it gives every operation one node id.)
    """
    statuses: Counter = Counter()
    problems: list[str] = []

    def send(case: schemathesis.Case) -> None:
        response = case.call(base_url=live.url, session=session, timeout=ANSWER_BOUND_S)
        statuses[response.status_code] += 1
        checks = [not_a_server_error, content_type_conformance]
        if response.status_code < 300:
            checks.append(response_schema_conformance)
        try:
            case.validate_response(response, checks=checks)
            if (
                operation.path in ENDPOINTS
                and case.method == "POST"
                and response.status_code >= 400
            ):
                body = response.json()
                assert isinstance(body["error"], str) and body["error"], "no error message"
                assert isinstance(body["detail"], list), "no detail list"
        except (AssertionError, BaseExceptionGroup, ValueError, KeyError) as failure:
            request = f"{case.method} {case.path} {case.headers} {case.body!r:.200}"
            problems.append(f"{request} -> {response.status_code} {response.text[:200]}: {failure}")

    coverage = api.iter_coverage_cases(
        operation,
        generation_modes=list(GenerationMode),
        generation_config=api.config.generation_for(operation=operation, phase="coverage"),
    )
    for case in coverage:
        send(case)
    # Without a body or parameters there is nothing invalid to generate.
    has_input = len(operation.body) > 0 or any(True for _ in operation.iter_parameters())
    for mode in GenerationMode if has_input else [GenerationMode.POSITIVE]:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            send(case)

        fuzz()

    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    figure = f"schemathesis {operation.label}"
    reliability(SCENARIO, f"{figure}: requests", statuses.total())
    reliability(SCENARIO, f"{figure}: statuses", counts(statuses))
    reliability(SCENARIO, f"{figure}: 5xx answers", server_errors, "= 0")
    reliability(SCENARIO, f"{figure}: answers failing a check", len(problems), "= 0")
    assert statuses.total() > 0
    assert server_errors == 0
    assert problems == []


# --- raw HTTP: oversized and lying requests ---------------------------------------------


@dataclass
class Exchange:
    """What came back for one raw request: a status, or how the connection ended without one."""

    status: int | None
    body: bytes
    ending: str  # "answered", "closed" (no answer before EOF), "reset" or "hung"

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")


def _parse(buffer: bytes, ending: str) -> Exchange:
    """What `buffer`, read until the connection ended as `ending`, says came back."""
    if ending == "hung":
        return Exchange(None, buffer, ending)
    head, separator, body = buffer.partition(b"\r\n\r\n")
    if not buffer.startswith(b"HTTP/1.1 ") or not separator:
        return Exchange(None, b"", ending)
    return Exchange(int(head[9:12]), body, "answered")


def _complete(buffer: bytes) -> bool:
    """A whole response with a Content-Length is in `buffer` (others end with the connection)."""
    head, separator, body = buffer.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def exchange(port: int, data: bytes, half_close: bool = False) -> Exchange:
    """Send `data` on a fresh connection, then read one response or the connection's end."""
    buffer = b""
    ending = "closed"
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND_S) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # an early answer and close while the rest was on its way
            pass
        try:
            while not _complete(buffer):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        except TimeoutError:
            ending = "hung"
        except OSError:
            ending = "reset"
    return _parse(buffer, ending)


def post(path: str, body: bytes, length: int | None = None, extra: bytes = b"") -> bytes:
    length = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def chunked(path: str, body: bytes, chunk_bytes: int = 65536) -> bytes:
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head.encode() + encoded


def texts_body(count: int, chars: int = 20) -> bytes:
    return json.dumps({"texts": ["set an alarm for seven"[:chars]] * count}).encode()


def oversized_cases() -> list[tuple[str, bytes, bool, set[int], str | None]]:
    """(name, request, half-close after sending, right statuses, words the answer must say).

    `None` for the words: the HTTP layer may also close the connection without an answer.
    """
    twenty_mb = json.dumps({"texts": ["a" * 900] * 23_000}).encode()
    one_mb_text = json.dumps({"text": "a" * 2**20}).encode()
    return [
        (
            "20 MB JSON body (Content-Length)",
            post("/predict_batch", twenty_mb),
            False,
            {413},
            "limit",
        ),
        ("20 MB JSON body (chunked)", chunked("/predict_batch", twenty_mb), False, {413}, "limit"),
        ("/predict text of 1 MB", post("/predict", one_mb_text), False, {413}, "limit"),
        (
            "/predict text of 100 KB",
            post("/predict", json.dumps({"text": "a" * 100_000}).encode()),
            False,
            {400},
            "at most 1000 characters",
        ),
        (
            "/predict_batch of 10,000 texts",
            post("/predict_batch", texts_body(10_000)),
            False,
            {413},
            "10000 texts",
        ),
        (
            "64 KB header",
            post("/predict", GOOD, extra=b"X-Padding: " + b"a" * 65_536 + b"\r\n"),
            False,
            {431},
            "headers",
        ),
        # Larger than what the HTTP parser buffers: its own plain 400, or a reset mid-send.
        (
            "4 MB header",
            post("/predict", GOOD, extra=b"X-Padding: " + b"a" * 4_000_000 + b"\r\n"),
            False,
            {400, 431},
            None,
        ),
        ("Content-Length 10^15", post("/predict", GOOD, length=10**15), False, {413}, "limit"),
        (
            "Content-Length larger than the body sent, connection kept open",
            post("/predict", GOOD, length=len(GOOD) + 100),
            False,
            {408},
            "not all received",
        ),
        (
            "Content-Length larger than the body sent, then the client's end closed",
            post("/predict", GOOD, length=len(GOOD) + 100),
            True,
            {400, 408},
            None,
        ),
        (
            "Content-Length smaller than the body sent",
            post("/predict", GOOD, length=len(GOOD) // 2),
            False,
            {400},
            "Invalid JSON",
        ),
        (
            "JSON nested 100,000 deep",
            post("/predict", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            False,
            {400},
            "recursion",
        ),
    ]


def test_oversized_and_lying_requests_get_a_clear_4xx(live: Live, reliability):
    """Each oversized or inconsistent request is refused with a 4xx that names the problem
    (or, where HTTP allows nothing else, the connection is closed), and never a 5xx."""
    outcomes: dict[str, str] = {}
    wrong: list[str] = []
    for name, data, half_close, statuses, words in oversized_cases():
        got = exchange(live.port, data, half_close=half_close)
        outcomes[name] = str(got.status) if got.status is not None else got.ending
        reliability(SCENARIO, f"oversized: {name}", outcomes[name], "/".join(map(str, statuses)))
        closed_ok = got.status is None and got.ending in ("closed", "reset") and words is None
        if closed_ok:
            continue
        if got.status not in statuses or (words is not None and words not in got.text):
            wrong.append(f"{name}: {got.status} {got.ending} {got.text[:300]!r}")
        # After each, a normal request on a new connection is answered as usual.
        assert httpx.post(f"{live.url}/predict", content=GOOD, timeout=10).status_code == 200
    server_errors = [n for n, s in outcomes.items() if s.isdigit() and int(s) >= 500]
    reliability(SCENARIO, "oversized: 5xx answers", len(server_errors), "= 0")
    reliability(
        SCENARIO,
        "oversized: hung (no answer, no close)",
        list(outcomes.values()).count("hung"),
        "= 0",
    )
    assert server_errors == []
    assert wrong == []
    assert_still_serving(live, reliability, "oversized")


# --- slow clients and clients that go away ------------------------------------------------


@dataclass
class SlowClient:
    kind: str
    pieces: list[bytes]
    pause_s: float  # after each piece
    statuses: set[int]


def slow_clients() -> list[SlowClient]:
    """Slowloris on the headers, on the body within the time limit, and a stalled body.

    The headers trickle for about 4.5 s (the body limit starts only once they are all in),
    the body for about 1.5 s of the 5 s allowed; a stalled body sends half and waits.
    """
    request = post("/predict", GOOD)
    head, body = request[: -len(GOOD)], GOOD
    crumbs = [head[i : i + 3] for i in range(0, len(head), 3)]
    bits = [body[i : i + 3] for i in range(0, len(body), 3)]
    return (
        [SlowClient("slow headers", [*crumbs, body], 0.12, {200}) for _ in range(20)]
        + [SlowClient("slow body", [head, *bits], 0.1, {200}) for _ in range(20)]
        + [SlowClient("stalled body", [head + body[:10]], 0.0, {408}) for _ in range(10)]
    )


async def run_slow(port: int, client: SlowClient) -> Exchange:
    buffer = b""
    ending = "closed"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(ANSWER_BOUND_S):
            for piece in client.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(client.pause_s)
            while not _complete(buffer):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
    except TimeoutError:
        ending = "hung"
    except OSError:
        ending = "reset"
    finally:
        writer.close()
    return _parse(buffer, ending)


async def run_all_slow(port: int, clients: list[SlowClient]) -> list[Exchange]:
    return await asyncio.gather(*(run_slow(port, c) for c in clients))


def test_slow_clients_do_not_hold_up_others(live: Live, reliability):
    """50 slow connections at once while a normal client keeps asking: the normal client
    never fails, slow but complete requests are answered, a stalled body gets a 408."""
    clients = slow_clients()
    with running_traffic(live.url) as (traffic,):
        results = asyncio.run(run_all_slow(live.port, clients))
    by_kind: dict[str, Counter] = {}
    wrong = []
    for client, got in zip(clients, results, strict=True):
        outcome = str(got.status) if got.status is not None else got.ending
        by_kind.setdefault(client.kind, Counter())[outcome] += 1
        if got.status not in client.statuses:
            wrong.append(f"{client.kind}: {outcome} {got.text[:300]!r}")
    server_errors = sum(1 for got in results if got.status is not None and got.status >= 500)
    for kind, outcomes in by_kind.items():
        reliability(SCENARIO, f"slow clients: {kind} answers", counts(outcomes))
    reliability(SCENARIO, "slow clients: 5xx answers", server_errors, "= 0")
    reliability(SCENARIO, "slow clients: normal requests meanwhile", len(traffic.answers))
    reliability(SCENARIO, "slow clients: normal requests failed", len(traffic.failures), "= 0")
    assert traffic.failures == []
    assert traffic.answers, "the normal client got no answer while the slow clients were open"
    assert server_errors == 0
    assert wrong == []
    assert_still_serving(live, reliability, "slow clients")


def test_clients_that_never_read_or_leave_mid_request(live: Live, reliability):
    """Requests whose client is gone before the answer, mid-body, or that pipelines requests
    and never reads the answers: the server drops them and goes on serving everyone else."""
    request = post("/predict_batch", texts_body(64))
    with running_traffic(live.url) as (traffic,):
        for _ in range(GONE):  # the whole request, then gone without reading
            with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
                sock.sendall(request)
        for _ in range(GONE):  # gone halfway through the body
            with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
                sock.sendall(request[: request.index(b"\r\n\r\n") + 100])
        with socket.create_connection(("127.0.0.1", live.port), timeout=2) as sock:
            # 300 pipelined requests, answers never read: the server's writes to this
            # connection fill up and wait, and it stops reading from it meanwhile.
            with contextlib.suppress(TimeoutError):
                sock.sendall(request * 300)
            before = len(traffic.answers)
            wait_until(lambda: len(traffic.answers) > before + 50, timeout_s=ANSWER_BOUND_S)
            answered_meanwhile = len(traffic.answers) - before
    reliability(SCENARIO, "never-reading clients: connections opened (input)", 2 * GONE + 1)
    reliability(
        SCENARIO,
        "never-reading clients: normal requests answered while one held on",
        answered_meanwhile,
    )
    reliability(
        SCENARIO, "never-reading clients: normal requests failed", len(traffic.failures), "= 0"
    )
    assert traffic.failures == []
    assert_still_serving(live, reliability, "never-reading clients")
