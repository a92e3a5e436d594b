"""Dynamic batching: concurrent requests' items gathered into one engine call.

Many workers call the predictor at once, each with a few items. A GPU decodes a batch
of 16 in little more time than one, so the batcher holds the oldest waiting item for up
to `max_wait_ms` while others arrive and then hands up to `max_batch_size` items to the
backend in one `generate` call. Calls run one at a time on a dedicated thread (a backend
is not re-entrant, and the event loop must stay free to accept requests); while one
batch runs, the next one fills, and a partial batch waits up to `max_wait_ms` after the
engine frees up, so the callers just answered can join it. `max_batch_size=1` turns
batching off.

An item whose caller gave up (timeout, disconnect) is dropped before it reaches the
engine; a full queue refuses new work instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine.backend import GenerationRequest, GenerationResult
from engine.metrics import BATCH_SIZE, QUEUE_DEPTH

Generate = Callable[[list[GenerationRequest]], list[GenerationResult]]


class Overloaded(Exception):
    """The queue is full: the caller should retry later (HTTP 503)."""


class RequestTimeout(Exception):
    """The request's items did not finish within the per-request timeout (HTTP 504)."""


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Feeds a backend's `generate` whole batches built from concurrent `submit` calls."""

    def __init__(self, generate: Generate, *, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.generate = generate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self._items: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._engine_free_at = 0.0

    async def submit(self, requests: Sequence[GenerationRequest], *, timeout_s: float) -> list[GenerationResult]:
        """Results for `requests`, in order, once the batches holding them have run."""
        self._ensure_running()
        if len(self._items) + len(requests) > self.max_queue:
            raise Overloaded(
                f"the predictor is busy: {len(self._items)} items are queued (limit {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        pending = [_Pending(request, loop.create_future()) for request in requests]
        self._items.extend(pending)
        QUEUE_DEPTH.set(len(self._items))
        self._wakeup.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(p.future for p in pending)), timeout_s))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request did not finish within {timeout_s:g} s") from None

    async def close(self) -> None:
        """Stop taking batches; the engine thread finishes the batch it is running."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._engine.shutdown(wait=False, cancel_futures=True)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    def _drop_abandoned(self) -> None:
        while self._items and self._items[0].future.done():
            self._items.popleft()

    async def _next_batch(self) -> list[_Pending]:
        """Wait for work, then up to `max_wait_s` (from the oldest item's arrival) for the batch to fill."""
        while True:
            self._drop_abandoned()
            if self._items:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        # Wait from the later of the oldest item's arrival and the engine becoming free: items that
        # queued up during the last batch would otherwise leave at once, half full, while the callers
        # that batch just answered are about to send their next items (two half batches alternating).
        deadline = max(self._items[0].enqueued, self._engine_free_at) + self.max_wait_s
        while len(self._items) < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Pending] = []
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if not item.future.done():
                batch.append(item)
        QUEUE_DEPTH.set(len(self._items))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            BATCH_SIZE.observe(len(batch))
            try:
                results = await loop.run_in_executor(self._engine, self.generate, [p.request for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the backend returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # the batch fails, the server and the next batch do not
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._engine_free_at = time.monotonic()
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
