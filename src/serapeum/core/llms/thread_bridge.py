"""Run blocking generation in a worker thread and hand its results to asyncio as they appear.

Every chunk reaches the event loop through ``loop.call_soon_threadsafe`` the moment the
worker produces it, so an ``async for`` sees the first token as soon as it exists. The
worker receives a ``threading.Event``; when the consumer stops early (``break``,
``aclose()``, task cancellation) the event is set and the worker is awaited, so the
caller knows generation has stopped (and any model lock is free) when control returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _DONE = range(3)


def _start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


# How many items the worker may produce ahead of the consumer: enough to overlap the
# next token with the consumer's work, small enough that an abandoned stream wastes
# at most a couple of tokens.
RUN_AHEAD = 2


async def iterate_in_thread(
    produce: Callable[[threading.Event], Iterator[T]],
    *,
    name: str = "serapeum-stream",
    run_ahead: int = RUN_AHEAD,
) -> AsyncIterator[T]:
    """Yield what ``produce(cancel_event)`` yields, iterating it in a worker thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    cancel = threading.Event()
    slots = threading.Semaphore(run_ahead)
    finished = loop.create_future()

    def post(kind: int, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def work() -> None:
        iterator = produce(cancel)
        try:
            for item in iterator:
                slots.acquire()  # wait while the consumer is run_ahead items behind
                if cancel.is_set():
                    break
                post(_ITEM, item)
        except BaseException as exc:
            post(_ERROR, exc)
        else:
            post(_DONE, None)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

    _start_worker(work, name)
    try:
        while True:
            kind, payload = await queue.get()
            if kind == _ITEM:
                slots.release()
                yield payload
            elif kind == _ERROR:
                raise payload
            else:
                return
    finally:
        cancel.set()
        slots.release()  # wake a worker waiting for room; it sees the cancel and stops
        await _wait_for_worker(finished)


async def run_in_thread(call: Callable[[threading.Event], T], *, name: str = "serapeum-call") -> T:
    """Return ``call(cancel_event)`` computed in a worker thread; cancelling sets the event."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()
    cancel = threading.Event()

    def deliver(outcome: Callable[[], None]) -> None:
        if not result.done():
            outcome()

    def work() -> None:
        try:
            value = call(cancel)
        except BaseException as exc:
            error = exc
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, lambda: result.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, lambda: result.set_result(value))

    _start_worker(work, name)
    try:
        return await asyncio.shield(result)
    except asyncio.CancelledError:
        cancel.set()
        await _wait_for_worker(result)
        raise


async def _wait_for_worker(finished: asyncio.Future[Any]) -> None:
    """Wait until the worker has let go of the model, even while being cancelled."""
    if finished.done():
        return
    with contextlib.suppress(BaseException):
        await asyncio.shield(finished)
    if not finished.done():  # cancelled again while waiting: finish waiting without the loop
        await asyncio.wait({finished})
