"""The Starlette application: three OpenAI routes over one ``LlamaCPP``.

Every call goes through the library's async API, so the event loop never blocks on the model
and a model with ``n_parallel=N`` slots serves N requests at once. A stream's first chunk is
taken before the response starts, so an error there (a full queue, a bad schema) still gets
its HTTP status; later errors travel as an error event. A client that leaves stops its
generation, streamed (the stream is closed) or not (the call is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from serapeum.llama_cpp.errors import InvalidRequestError
from serapeum.llama_cpp.llm import LlamaCPP
from serapeum.llama_cpp.serve import wire
from serapeum.llama_cpp.serve.events import MEDIA_TYPE, event_stream
from serapeum.llama_cpp.serve.failures import error_body, failure_for

__all__ = ["create_app"]

# Proxies (nginx) buffer responses unless told not to; a stream must arrive as it is made.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")

# What a handler answers a client that has gone (nobody reads it): nginx's "client closed".
_CLIENT_CLOSED = 499


class _ClientDisconnected(Exception):
    """The client closed its connection before its answer was ready."""


def _error_response(exc: Exception, fields: Mapping[str, str] | None = None) -> JSONResponse:
    failure = failure_for(exc, fields)
    return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has closed its connection (the request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, cancelled (which stops the library's generation and frees the model)
    if the client leaves first: then ``_ClientDisconnected``."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    left = False
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        left = not task.done()
    finally:
        for pending in (watch, task):
            if not pending.done():
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending  # once the task is done, the generation's thread has stopped
    if left:
        raise _ClientDisconnected
    return task.result()


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the request body is not valid JSON") from None


async def _first(stream: AsyncIterator[Any]) -> Any:
    """The stream's first item (None if it has none); the stream is closed if that fails."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None
    except BaseException:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        raise


class _Routes:
    """The handlers, bound to one model and the id it is served under."""

    def __init__(self, llm: LlamaCPP, model_id: str) -> None:
        self.llm = llm
        self.model_id = model_id
        self.created = int(time.time())

    async def models(self, _request: Request) -> Response:
        return JSONResponse(wire.model_list(self.model_id, self.created))

    async def model(self, request: Request) -> Response:
        if request.path_params["model"] != self.model_id:
            body = error_body(
                f"the model {request.path_params['model']!r} does not exist; this server runs "
                f"{self.model_id!r}",
                param="model",
                code="model_not_found",
            )
            return JSONResponse(body, status_code=404)
        return JSONResponse(wire.model_entry(self.model_id, self.created))

    async def completions(self, request: Request) -> Response:
        return await self._answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, chat=True)

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        fields: Mapping[str, str] = wire.DEFAULT_FIELDS
        try:
            payload = await _json_body(request)
            call = wire.parse_chat(payload) if chat else wire.parse_completion(payload)
            fields = call.fields
            reply = wire.Reply(self.model_id, chat=chat, include_usage=call.include_usage)
            if call.stream:
                return await self._stream(call, reply)
            answer = await _unless_disconnected(request.receive, self._generate(call))
            return JSONResponse(reply.whole(answer))
        except _ClientDisconnected:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            return _error_response(exc, fields)

    async def _generate(self, call: wire.Call) -> wire.Response:
        options: dict[str, Any] = call.options
        if isinstance(call.prompt, str):
            return await self.llm.acomplete(call.prompt, formatted=True, **options)
        return await self.llm.achat(list(call.prompt), **options)

    async def _open_stream(self, call: wire.Call) -> AsyncIterator[wire.Response]:
        options: dict[str, Any] = call.options
        if isinstance(call.prompt, str):
            return await self.llm.acomplete(call.prompt, formatted=True, stream=True, **options)
        return await self.llm.achat(list(call.prompt), stream=True, **options)

    async def _stream(self, call: wire.Call, reply: wire.Reply) -> Response:
        stream = await self._open_stream(call)
        first = await _first(stream)
        events = event_stream(
            first,
            stream,
            render=reply.chunk,
            finish=reply.finish,
            failure=lambda exc: failure_for(exc, call.fields).body,
        )
        return StreamingResponse(events, media_type=MEDIA_TYPE, headers=_STREAM_HEADERS)


async def _http_error(_request: Request, exc: Exception) -> Response:
    """404, 405 and the like as OpenAI-style JSON, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), kind=kind), status_code=exc.status_code, headers=exc.headers
    )


def create_app(llm: LlamaCPP, *, model_id: str) -> Starlette:
    """An ASGI app serving ``llm`` under OpenAI's API as ``model_id``.

    Requests may name any model: the server runs one, and answers as ``model_id``.
    """
    routes = _Routes(llm, model_id)
    return Starlette(
        routes=[
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.model, methods=["GET"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
