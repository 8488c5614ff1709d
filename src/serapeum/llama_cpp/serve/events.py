"""Server-sent events: the framing OpenAI's streaming endpoints use.

Each event is one ``data: <json>`` line and a blank line; the stream ends with
``data: [DONE]``. An error after the response has started cannot change its status, so it
travels as an event of its own (``{"error": {...}}``), which OpenAI's clients raise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["DONE", "MEDIA_TYPE", "event", "event_stream"]

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"

T = TypeVar("T")


def event(payload: Mapping[str, Any]) -> bytes:
    """One ``data:`` event holding ``payload`` as compact JSON (one line: JSON escapes newlines)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


async def event_stream(
    first: T | None,
    rest: AsyncIterator[T],
    *,
    render: Callable[[T], Iterable[Mapping[str, Any]]],
    finish: Callable[[], Iterable[Mapping[str, Any]]],
    failure: Callable[[Exception], Mapping[str, Any]],
) -> AsyncIterator[bytes]:
    """The events of a stream whose first item was already taken (None: it was empty).

    ``render`` turns an item into events, ``finish`` gives the closing ones, ``failure`` the
    error event. Leaving early (the client disconnected, so the server cancels this
    generator) closes ``rest``, which stops generation and frees the model's slot.
    """
    try:
        try:
            if first is not None:
                for payload in render(first):
                    yield event(payload)
            async for item in rest:
                for payload in render(item):
                    yield event(payload)
            for payload in finish():
                yield event(payload)
        except Exception as exc:  # the status line has gone: report it in the stream
            yield event(failure(exc))
        yield DONE
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
