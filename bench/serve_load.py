"""A closed-loop HTTP/1.1 load generator for loopback servers, run as its own process.

`concurrency` keep-alive connections each send a POST, wait for the whole answer and send the
next, for `duration_s` after a warm-up. It speaks just enough HTTP (Content-Length and chunked
bodies) to stay cheap, so that the server, not the generator, is what is measured; to show that
it is, it also reports its own CPU time (user + system) over the measured phase, in all
(`load_cpu_s`), per request (`load_cpu_ms_per_request`) and as a share of one core
(`load_cpu_share`: near 1 means the generator, not the server, was the limit). Prints one JSON
object with those, the request and error counts, requests per second and p50/p99 latencies:

    python bench/serve_load.py --port 3000 --path /predict --bodies bodies.json
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
        await reader.readexactly(size + 2)
    await reader.readline()
    return status


async def _connection(
    port: int, requests: list[bytes], offset: int, stride: int, phases: dict, out: dict
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (now := time.perf_counter()) < phases["end"]:
            writer.write(requests[i % len(requests)])
            i += stride
            status = await _read_response(reader)
            done = time.perf_counter()
            if now >= phases["start"]:
                out["latencies"].append(done - now)
                if status != 200:
                    out["errors"] += 1
    finally:
        writer.close()


async def _cpu_at(when: float, out: dict) -> None:
    """Record this process's CPU seconds once the measured phase starts."""
    await asyncio.sleep(max(0.0, when - time.perf_counter()))
    out["cpu_start"] = time.process_time()
    out["wall_start"] = time.perf_counter()


async def run(
    port: int, path: str, bodies: list[bytes], concurrency: int, duration_s: float, warmup_s: float
) -> dict:
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    start = time.perf_counter() + warmup_s
    phases = {"start": start, "end": start + duration_s}
    out: dict = {"latencies": [], "errors": 0}
    await asyncio.gather(
        _cpu_at(start, out),
        *(_connection(port, requests, c, concurrency, phases, out) for c in range(concurrency)),
    )
    # Until the last request started in the measured phase has its answer.
    cpu_s = time.process_time() - out["cpu_start"]
    wall_s = time.perf_counter() - out["wall_start"]
    latencies = sorted(out["latencies"])
    count = len(latencies)
    return {
        "requests": count,
        "errors": out["errors"],
        "rps": count / duration_s,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[min(count - 1, int(0.99 * count))] if latencies else None,
        "load_cpu_s": cpu_s,
        "load_cpu_ms_per_request": 1000 * cpu_s / max(1, count),
        "load_cpu_share": cpu_s / wall_s if wall_s > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    bodies = [json.dumps(b).encode() for b in json.loads(args.bodies.read_text())]
    result = asyncio.run(
        run(args.port, args.path, bodies, args.concurrency, args.duration, args.warmup)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
