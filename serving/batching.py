"""Coalescing concurrent requests into one model call.

The batch model's cost is mostly per call, not per text, so texts that arrive together should
be scored together. BentoML's adaptive batching would do it only for endpoints whose request
body is itself a list; this coalescer serves `{text}` requests as well, with no timed window.

The model runs on the event loop itself, not in a worker thread: each worker process has one
core's worth of Python, and a model thread competing with the loop for the GIL costs far more
CPU per request than it saves. Before a call, the coalescer lets the
loop turn a few times, so that requests whose bytes have already arrived are parsed and join;
requests that arrive during a call go together in the next one. An idle server answers at
once (a few loop turns are microseconds); a busy one makes bigger calls.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item, as T is a result
T = TypeVar("T")

# Loop turns a request takes from readable socket to `__call__` (parse, task start, body).
GATHER_TURNS = 6


class Coalescer(Generic[I, T]):
    """Await `coalescer(items)` from the event loop (texts, or queries); `fn` maps a list of
    items to one result per item, one call at a time, with at most `max_items` items (a single
    request larger than that still goes whole). An exception from `fn` is raised in every
    request of that call."""

    def __init__(
        self,
        fn: Callable[[list[I]], Sequence[T]],
        max_items: int,
        gather_turns: int = GATHER_TURNS,
    ) -> None:
        self.fn = fn
        self.max_items = max_items
        self.gather_turns = gather_turns
        self._pending: list[tuple[list[I], asyncio.Future[list[T]]]] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def __call__(self, items: list[I]) -> list[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[T]] = loop.create_future()
        self._pending.append((items, future))
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[I], asyncio.Future[list[T]]]]:
        taken, size = 0, 0
        for items, _ in self._pending:
            if taken and size + len(items) > self.max_items:
                break
            taken, size = taken + 1, size + len(items)
        group, self._pending = self._pending[:taken], self._pending[taken:]
        return [(items, future) for items, future in group if not future.done()]

    async def _drain(self) -> None:
        try:
            while self._pending:
                for _ in range(self.gather_turns):
                    await asyncio.sleep(0)
                if group := self._take():
                    self._run(group)
        finally:
            self._drain_task = None

    def _run(self, group: list[tuple[list[I], asyncio.Future[list[T]]]]) -> None:
        try:
            results = self.fn([item for items, _ in group for item in items])
        except Exception as exc:
            for _, future in group:
                future.set_exception(exc)
            return
        start = 0
        for items, future in group:
            future.set_result(list(results[start : start + len(items)]))
            start += len(items)
