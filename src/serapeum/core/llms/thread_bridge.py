"""Run blocking generation in a worker thread and hand its results to asyncio as they appear.

Every chunk reaches the event loop through ``loop.call_soon_threadsafe`` the moment the
worker produces it, so an ``async for`` sees the first token as soon as it exists. The
worker receives a ``CancelToken``; when the consumer stops early (``break``,
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

from serapeum.core.cancellation import CancelToken

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

# How often a waiting worker checks whether its consumer (or event loop) has gone.
_POLL_SECONDS = 0.1


class _Job:
    """Decides, once, whether a queued job runs or is skipped (its caller gave up first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "queued"

    def _claim(self, state: str) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = state
            return True

    def start(self) -> bool:
        return self._claim("running")

    def skip(self) -> bool:
        return self._claim("skipped")


def _settle_threadsafe(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], setter: Callable[[], None]
) -> None:
    def settle() -> None:
        if not future.done():
            setter()

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


async def iterate_in_thread(
    produce: Callable[[CancelToken], Iterator[T]],
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
    cancel = CancelToken()
    slots = threading.Semaphore(run_ahead)
    first_taken = threading.Event()
    finished: asyncio.Future[None] = loop.create_future()
    job = _Job()

    def abandoned() -> bool:
        return cancel.is_set() or loop.is_closed()

    def wait(blocking_wait: Callable[[float], bool]) -> bool:
        """Wait for the consumer; False when it (or its loop) is gone."""
        while not blocking_wait(_POLL_SECONDS):
            if abandoned():
                return False
        return not cancel.is_set()

    def post(kind: int, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        try:
            if not job.start():  # the consumer gave up while this was queued
                return
            iterator: Iterator[T] | None = None
            try:
                iterator = produce(cancel)
                for index, item in enumerate(iterator):
                    if not wait(
                        lambda seconds: slots.acquire(timeout=seconds)
                    ):  # run_ahead at most
                        break
                    post(_ITEM, item)
                    # Let the event loop take the first item before generating on: without
                    # this wait the worker keeps the GIL busy and the first chunk's delivery
                    # waits for the interpreter's switch interval (5 ms).
                    if index == 0 and not wait(first_taken.wait):
                        break
            except BaseException as exc:
                post(_ERROR, exc)
            else:
                post(_DONE, None)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        logger.exception("closing a serapeum stream failed")
        finally:
            _settle_threadsafe(loop, finished, lambda: finished.set_result(None))

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
        if not job.skip():  # it started: wait until it has let go of the model
            await _wait_for_worker(finished)


async def run_in_thread(
    call: Callable[[CancelToken], T],
    *,
    name: str = "serapeum-call",
    worker: Worker | None = None,
) -> T:
    """Return ``call(cancel_event)`` computed in a worker thread; cancelling sets the event.

    A call cancelled while still queued behind others is dropped at once; one that is
    running is stopped through the event and awaited, so it has let go when this returns.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()
    cancel = CancelToken()
    job = _Job()

    def work() -> None:
        if not job.start():
            return
        try:
            value = call(cancel)
        except BaseException as exc:
            error = exc
            _settle_threadsafe(loop, result, lambda: result.set_exception(error))
        else:
            _settle_threadsafe(loop, result, lambda: result.set_result(value))

    _start(work, name, worker)
    try:
        return await asyncio.shield(result)
    except asyncio.CancelledError:
        cancel.set()
        if not job.skip():
            await _wait_for_worker(result)
        raise


async def _wait_for_worker(finished: asyncio.Future[Any]) -> None:
    """Wait until the worker has let go of the model.

    A cancellation that arrives meanwhile is remembered and re-raised once the worker
    has finished, so it is neither lost nor allowed to cut the wait short.
    """
    cancelled = False
    while not finished.done():
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break  # the worker's own error: it is done
    if not finished.cancelled():
        finished.exception()  # retrieved: no "exception was never retrieved" warning
    if cancelled:
        raise asyncio.CancelledError
