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
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

_ITEM, _ERROR, _DONE = range(3)


class Worker:
    """One long-lived daemon thread that runs submitted calls in order.

    Native libraries keep per-thread state (llama.cpp's OpenMP thread team is created
    for each new calling thread), so running every call of one model on the same thread
    is measurably faster than a fresh thread per call.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            try:
                call()
            except BaseException:  # calls report their own errors; keep serving the others
                logger.exception("serapeum worker call failed")
            del call  # hold nothing (and so no model) while idle

    def submit(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def stop(self) -> None:
        """Finish the calls already submitted, then end the thread."""
        self._calls.put(None)


def _start(target: Callable[[], None], name: str, worker: Worker | None) -> None:
    if worker is not None:
        worker.submit(target)
    else:
        threading.Thread(target=target, name=name, daemon=True).start()


# How many items the worker may produce ahead of the consumer: enough to overlap the
# next token with the consumer's work, small enough that an abandoned stream wastes
# at most a couple of tokens.
RUN_AHEAD = 2


async def iterate_in_thread(
    produce: Callable[[threading.Event], Iterator[T]],
    *,
    name: str = "serapeum-stream",
    run_ahead: int = RUN_AHEAD,
    worker: Worker | None = None,
) -> AsyncIterator[T]:
    """Yield what ``produce(cancel_event)`` yields, iterating it in a worker thread.

    ``worker`` runs it on that long-lived thread; without one a new thread is started.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    cancel = threading.Event()
    slots = threading.Semaphore(run_ahead)
    first_taken = threading.Event()
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
        if cancel.is_set():  # abandoned while queued behind another call
            loop.call_soon_threadsafe(settle)
            return
        iterator = produce(cancel)
        try:
            for index, item in enumerate(iterator):
                slots.acquire()  # wait while the consumer is run_ahead items behind
                if cancel.is_set():
                    break
                post(_ITEM, item)
                if index == 0:
                    # Let the event loop take the first item before generating on: without
                    # this wait the worker keeps the GIL busy and the first chunk's delivery
                    # waits for the interpreter's switch interval (5 ms).
                    first_taken.wait()
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

    _start(work, name, worker)
    try:
        while True:
            kind, payload = await queue.get()
            if kind == _ITEM:
                slots.release()
                first_taken.set()
                yield payload
            elif kind == _ERROR:
                raise payload
            else:
                return
    finally:
        cancel.set()
        first_taken.set()
        slots.release()  # wake a worker waiting for room; it sees the cancel and stops
        await _wait_for_worker(finished)


async def run_in_thread(
    call: Callable[[threading.Event], T],
    *,
    name: str = "serapeum-call",
    worker: Worker | None = None,
) -> T:
    """Return ``call(cancel_event)`` computed in a worker thread; cancelling sets the event."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()
    cancel = threading.Event()

    def deliver(outcome: Callable[[], object]) -> None:
        if not result.done():
            outcome()

    def work() -> None:
        if cancel.is_set():  # cancelled while queued behind another call
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, lambda: result.cancel())
            return
        try:
            value = call(cancel)
        except BaseException as exc:
            error = exc
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, lambda: result.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, lambda: result.set_result(value))

    _start(work, name, worker)
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
