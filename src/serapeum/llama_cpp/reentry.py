"""Refuse calls that would deadlock behind an unfinished async stream of the same model.

An async stream's worker holds the model and waits for its consumer. A call that the
consumer itself waits for can then never run:

- an async call from the consumer's task, or from a task it started (``wait_for``,
  ``gather``, ``to_thread`` copy the context: a context variable follows them);
- a blocking call on the thread that runs the consumer's event loop.

Such calls raise ``ModelBusyError`` instead. Markers hold the model and the loop weakly,
so they never keep a model loaded.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from contextvars import ContextVar
from typing import Any

from serapeum.core.plugins import LoadedModel
from serapeum.llama_cpp.errors import ModelBusyError

_HINT = "consume it to the end or close it (`await stream.aclose()`) first"


class StreamMarker:
    """One async stream: created when the call returns it, active from its first item."""

    __slots__ = ("_loop", "_model", "closed", "started")

    def __init__(self, model: LoadedModel, loop: asyncio.AbstractEventLoop) -> None:
        self._model = weakref.ref(model)
        self._loop = weakref.ref(loop)
        self.started = False
        self.closed = False

    def active_for(self, model: LoadedModel) -> bool:
        return self.started and not self.closed and self._model() is model

    def on_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._loop() is loop

    @property
    def stale(self) -> bool:
        return self.closed or self._model() is None


_in_context: ContextVar[tuple[StreamMarker, ...]] = ContextVar("serapeum_streams", default=())
_by_model: weakref.WeakKeyDictionary[Any, set[StreamMarker]] = weakref.WeakKeyDictionary()
_by_model_lock = threading.Lock()


def new_stream(model: LoadedModel) -> StreamMarker:
    """Record a stream in the caller's context (call where the stream is handed out)."""
    marker = StreamMarker(model, asyncio.get_running_loop())
    _in_context.set((*(m for m in _in_context.get() if not m.stale), marker))
    return marker


def stream_started(marker: StreamMarker, model: LoadedModel) -> None:
    refuse_async_call(model)
    marker.started = True
    with _by_model_lock:
        _by_model.setdefault(model, set()).add(marker)


def stream_closed(marker: StreamMarker, model: LoadedModel) -> None:
    marker.closed = True
    with _by_model_lock:
        _by_model.get(model, set()).discard(marker)


def refuse_async_call(model: LoadedModel) -> None:
    if any(m.active_for(model) for m in _in_context.get()):
        raise ModelBusyError(
            f"model {model.name!r} has an unfinished async stream in this task (or the task "
            f"that started this one), and this call would wait behind it forever; {_HINT}"
        )


def refuse_blocking_call(model: LoadedModel) -> None:
    refuse_async_call(model)  # e.g. asyncio.to_thread(llm.complete) from the consumer
    streams = _by_model.get(model)
    if not streams:
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    with _by_model_lock:
        on_this_loop = any(m.on_loop(running) for m in streams)
    if on_this_loop:
        raise ModelBusyError(
            f"model {model.name!r} has an unfinished async stream on this event loop; a "
            f"blocking call here would stop the loop that stream needs. Use the async API "
            f"(acomplete/achat), or {_HINT}"
        )
