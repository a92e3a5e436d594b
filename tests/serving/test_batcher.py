"""The dynamic batcher's rules, checked with a recording stand-in for a backend's `generate`."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.backend import GenerationRequest, GenerationResult, TransientEngineError
from engine.batcher import Batcher, Overloaded, RequestTimeout


class RecordingGenerate:
    """Returns one result per request (its instruction as text) and records each call's batch."""

    def __init__(self, delay_s: float = 0.0, fail_first: Exception | None = None):
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.release = threading.Event()
        self.release.set()

    def __call__(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.release.wait()
        time.sleep(self.delay_s)
        self.batches.append([r.instruction for r in requests])
        if self.fail_first is not None:
            error, self.fail_first = self.fail_first, None
            raise error
        return [GenerationResult(text=r.instruction) for r in requests]


def req(name: str) -> GenerationRequest:
    return GenerationRequest(image=b"x", instruction=name)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submissions_share_a_batch_and_keep_order():
    generate = RecordingGenerate()

    async def main():
        batcher = Batcher(generate, max_batch_size=8, max_wait_ms=200, max_queue=100)
        results = await asyncio.gather(*(batcher.submit([req(f"a{i}"), req(f"b{i}")], timeout_s=5) for i in range(3)))
        await batcher.close()
        return results

    results = run(main())
    assert [[r.text for r in rs] for rs in results] == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"]]
    assert len(generate.batches) == 1 and sorted(generate.batches[0]) == sorted(f"{p}{i}" for i in range(3) for p in "ab")


def test_batches_never_exceed_max_batch_size_and_full_batches_do_not_wait():
    generate = RecordingGenerate()

    async def main():
        batcher = Batcher(generate, max_batch_size=4, max_wait_ms=10_000, max_queue=100)
        start = time.monotonic()
        await batcher.submit([req(str(i)) for i in range(8)], timeout_s=5)
        elapsed = time.monotonic() - start
        await batcher.close()
        return elapsed

    assert run(main()) < 5  # two full batches went at once, without the 10 s wait
    assert [len(b) for b in generate.batches] == [4, 4]


def test_max_batch_size_one_turns_batching_off():
    generate = RecordingGenerate()

    async def main():
        batcher = Batcher(generate, max_batch_size=1, max_wait_ms=50, max_queue=100)
        await asyncio.gather(*(batcher.submit([req(str(i))], timeout_s=5) for i in range(5)))
        await batcher.close()

    run(main())
    assert [len(b) for b in generate.batches] == [1] * 5


def test_a_partial_batch_waits_at_most_max_wait():
    generate = RecordingGenerate()

    async def main():
        batcher = Batcher(generate, max_batch_size=64, max_wait_ms=100, max_queue=100)
        start = time.monotonic()
        await batcher.submit([req("alone")], timeout_s=5)
        elapsed = time.monotonic() - start
        await batcher.close()
        return elapsed

    assert 0.09 <= run(main()) < 2


def test_timeout_and_abandoned_items_never_reach_the_engine():
    generate = RecordingGenerate()
    generate.release.clear()  # the engine is stuck on the first batch

    async def main():
        batcher = Batcher(generate, max_batch_size=1, max_wait_ms=0, max_queue=100)
        first = asyncio.create_task(batcher.submit([req("first")], timeout_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeout, match="did not finish within 0.1 s"):
            await batcher.submit([req("late")], timeout_s=0.1)
        generate.release.set()
        await first
        await batcher.submit([req("after")], timeout_s=5)
        await batcher.close()

    run(main())
    assert generate.batches == [["first"], ["after"]]


def test_a_full_queue_refuses_instead_of_growing():
    generate = RecordingGenerate()
    generate.release.clear()

    async def main():
        batcher = Batcher(generate, max_batch_size=1, max_wait_ms=0, max_queue=3)
        running = asyncio.create_task(batcher.submit([req("0")], timeout_s=5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit([req("1"), req("2"), req("3")], timeout_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="3 items are queued"):
            await batcher.submit([req("4")], timeout_s=5)
        generate.release.set()
        await asyncio.gather(running, queued)
        await batcher.close()

    run(main())


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs():
    generate = RecordingGenerate(fail_first=TransientEngineError("out of memory"))

    async def main():
        batcher = Batcher(generate, max_batch_size=4, max_wait_ms=0, max_queue=100)
        with pytest.raises(TransientEngineError, match="out of memory"):
            await batcher.submit([req("doomed")], timeout_s=5)
        [result] = await batcher.submit([req("fine")], timeout_s=5)
        await batcher.close()
        return result

    assert run(main()).text == "fine"


def test_callers_answered_by_a_batch_join_the_next_one_instead_of_alternating_half_batches():
    """Four clients start with the engine idle, four more while their batch runs; each client sends its
    next item as soon as it has its answer. The late four must wait for the first four to come back."""
    generate = RecordingGenerate(delay_s=0.1)
    batcher = Batcher(generate, max_batch_size=8, max_wait_ms=25, max_queue=100)

    async def client(name: str, start_s: float) -> None:
        await asyncio.sleep(start_s)
        for turn in range(5):
            await batcher.submit([req(f"{name}-{turn}")], timeout_s=10)

    async def main() -> None:
        await asyncio.gather(*(client(f"early{i}", 0.0) for i in range(4)), *(client(f"late{i}", 0.06) for i in range(4)))
        await batcher.close()

    run(main())
    sizes = [len(batch) for batch in generate.batches]
    assert sizes[0] == 4 and sum(sizes) == 40
    assert sizes[1:5] == [8, 8, 8, 8], sizes  # not [4, 4, 4, 4, ...]
