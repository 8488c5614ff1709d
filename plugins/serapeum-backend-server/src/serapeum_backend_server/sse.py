"""Server-sent events: the ``data:`` payloads of a streamed completion, one per event.

Both servers stream with SSE. llama-server writes ``data: <json>\\n\\n`` per result
(``format_oai_sse`` in server-common.cpp), ``:`` comment lines as keep-alive pings while a
long prompt is evaluated (``sse_ping_interval``) and, on its OpenAI endpoints only, a
final ``data: [DONE]``; its native ``/completion`` stream just ends. llama-cpp-python's
server (sse-starlette, ``sep="\\n"``) writes ``data: <json>`` events, ``: ping - <time>``
comments, and ends with ``data: [DONE]``. Parsing follows the HTML SSE rules, so other
servers work too: ``event:``/``id:``/``retry:`` lines are ignored, several ``data:`` lines
of one event are joined with newlines, and an event the stream cut off before its blank
line is dropped (a half-received JSON payload is never handed on).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["DONE", "iter_sse_data"]

DONE = "[DONE]"


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Yield the data of each complete event in ``lines`` (e.g. ``httpx.Response.iter_lines()``).

    Lines may keep their line ending (``\\n``, ``\\r\\n`` or ``\\r``); a leading byte-order
    mark is skipped. The caller stops at ``DONE``; this generator does not interpret it.
    """
    data: list[str] | None = None
    first = True
    for raw in lines:
        line = raw.rstrip("\r\n")
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        if not line:
            if data is not None:
                yield "\n".join(data)
                data = None
            continue
        if line.startswith(":"):
            continue  # a comment: keep-alive ping
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            if data is None:
                data = []
            data.append(value)
        # "event", "id", "retry" and unknown fields carry nothing a completion needs
