"""The thread-to-asyncio bridge on plain iterators: failures, abandonment, queued cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from serapeum.core.llms.thread_bridge import Worker, iterate_in_thread, run_in_thread


def test_a_producer_that_fails_before_yielding_reaches_the_consumer() -> None:
    def produce(_cancel: threading.Event) -> Iterator[int]:
        raise LookupError("no such model")

    async def run() -> None:
        with pytest.raises(LookupError, match="no such model"):
            async for _ in iterate_in_thread(produce):
                pass

    asyncio.run(run())


def test_an_iterator_that_fails_midway_reaches_the_consumer_after_its_items() -> None:
    def produce(_cancel: threading.Event) -> Iterator[int]:
        yield 1
        raise RuntimeError("broke")

    async def run() -> list[int]:
        seen = []
        with pytest.raises(RuntimeError, match="broke"):
            async for item in iterate_in_thread(produce):
                seen.append(item)
        return seen

    assert asyncio.run(run()) == [1]


def test_worker_notices_a_closed_loop_and_stops() -> None:
    closed = threading.Event()

    def produce(cancel: threading.Event) -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.set()

    loop = asyncio.new_event_loop()

    async def take_two() -> None:
        stream = iterate_in_thread(produce)
        await anext(stream)
        await anext(stream)  # the generator is left suspended, never closed

    loop.run_until_complete(take_two())
    loop.close()  # without shutdown_asyncgens: nobody will ever consume again
    assert closed.wait(30), "the worker kept waiting for a consumer that is gone"


def test_cancelling_a_call_queued_behind_a_stuck_one_returns() -> None:
    worker = Worker(name="test-worker")
    release = threading.Event()
    ran: list[str] = []

    def stuck(_cancel: threading.Event) -> str:
        release.wait(30)
        return "stuck"

    def queued(_cancel: threading.Event) -> str:
        ran.append("queued")
        return "queued"

    async def run() -> None:
        first = asyncio.create_task(run_in_thread(stuck, worker=worker))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run_in_thread(queued, worker=worker), 0.2)
        release.set()
        assert await first == "stuck"

    asyncio.run(run())
    done = threading.Event()
    worker.submit(done.set)
    assert done.wait(30)
    assert ran == []  # the cancelled call was dropped, not run later
    worker.stop()


def test_a_cancellation_during_aclose_is_not_lost() -> None:
    def produce(_cancel: object) -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            time.sleep(0.5)  # the worker takes a while to let go

    async def run() -> None:
        stream = iterate_in_thread(produce)
        await anext(stream)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await stream.aclose()  # waits for the worker; the timeout fires meanwhile

    asyncio.run(run())
