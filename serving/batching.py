"""Coalescing concurrent requests into one model call.

The batch model's cost is mostly per call, not per text, so texts that arrive together should
be scored together. BentoML's adaptive batching would do it only for endpoints whose request
body is itself a list; this coalescer serves `{text}` requests as well, with no batching window:
while one call computes in a worker thread, the requests that arrive queue up and go together
as the next call. An idle server answers at once; a busy one makes bigger calls.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Await `coalescer(texts)` from the event loop; `fn` maps a list of texts to one result
    per text and runs in a worker thread, one call at a time, with at most `max_texts` texts
    (a single request larger than that still goes whole). An exception from `fn` is raised in
    every request of that call."""

    def __init__(self, fn: Callable[[list[str]], Sequence[T]], max_texts: int) -> None:
        self.fn = fn
        self.max_texts = max_texts
        self._pending: list[tuple[list[str], asyncio.Future[list[T]]]] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def __call__(self, texts: list[str]) -> list[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[T]] = loop.create_future()
        self._pending.append((texts, future))
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future[list[T]]]]:
        taken, size = 0, 0
        for texts, _ in self._pending:
            if taken and size + len(texts) > self.max_texts:
                break
            taken, size = taken + 1, size + len(texts)
        group, self._pending = self._pending[:taken], self._pending[taken:]
        return group

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group = [(texts, f) for texts, f in self._take() if not f.done()]
                if not group:
                    continue
                texts = [text for request, _ in group for text in request]
                try:
                    results = await loop.run_in_executor(None, self.fn, texts)
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for request, future in group:
                    if not future.done():
                        future.set_result(list(results[start : start + len(request)]))
                    start += len(request)
        finally:
            self._drain_task = None
