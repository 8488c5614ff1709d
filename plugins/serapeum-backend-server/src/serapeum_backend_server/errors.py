"""Errors of the server backend: which server failed, how, and what to do about it.

Every error derives from ``serapeum.core.errors.SerapeumError`` and from the builtin it
specialises: ``ConnectionError`` when no server could be reached (or one went away), and
``RuntimeError`` when a server answered with something that retrying will not fix. Server
URLs in messages and attributes are always redacted (no user:password, no query values),
so an error can be logged or pasted into a bug report as it is. Bad options are
``serapeum.core.errors.ConfigurationError``, as in the rest of serapeum.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from serapeum.core.errors import SerapeumError
from serapeum.core.redact import redact_text, redact_url

__all__ = [
    "RETRYABLE_STATUSES",
    "ServerDisconnectedError",
    "ServerProtocolError",
    "ServerResponseError",
    "ServerUnavailableError",
    "error_detail",
    "is_retryable_status",
    "response_error",
]

# Statuses another server (or the same one later) may answer differently: busy, loading,
# a gateway that lost its upstream. A 500 is NOT among them: llama-cpp-python's server
# reports request validation errors as 500 (verified: a token-id prompt gives a 500
# "internal_server_error" listing pydantic errors), and llama-server uses 500 for its own
# ERROR_TYPE_SERVER, so resending the same request elsewhere would fail the same way.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 502, 503, 504})
_AUTH_STATUSES = frozenset({401, 403})
_MAX_DETAIL = 500


class ServerUnavailableError(SerapeumError, ConnectionError):
    """No server could take the request.

    ``problems`` maps each server's redacted URL to the last thing that went wrong with it
    (connection refused, timed out, 503 loading model...); the message lists them all.
    """

    def __init__(self, message: str | None = None, *, problems: Mapping[str, str]) -> None:
        self.problems = {redact_url(url): redact_text(problem) for url, problem in problems.items()}
        if message is None:
            listed = "; ".join(f"{url}: {problem}" for url, problem in self.problems.items())
            message = f"no server could take the request ({listed})"
        super().__init__(redact_text(message))


class ServerDisconnectedError(SerapeumError, ConnectionError):
    """The server went away after the first token arrived.

    Never retried on another server, which would silently generate (and bill) the answer
    twice; ``text`` is what arrived before the connection broke.
    """

    def __init__(self, message: str, *, text: str, server: str) -> None:
        super().__init__(redact_text(message))
        self.text = text
        self.server = redact_url(server)


class ServerResponseError(SerapeumError, RuntimeError):
    """The server refused the request in a way that another try will not fix.

    400 (a request the server will not take), 401/403 (the message says to check
    ``api_key``), 404 (no such endpoint or model), 422, 500... ``detail`` is the server's
    own explanation, shortened. ``text`` is what the answer had streamed before an error
    event ended it ("" when it refused the request outright).
    """

    def __init__(
        self, message: str, *, status: int, server: str, detail: str = "", text: str = ""
    ) -> None:
        super().__init__(redact_text(message))
        self.status = status
        self.server = redact_url(server)
        self.detail = redact_text(detail)
        self.text = text


class ServerProtocolError(ServerResponseError):
    """The server's reply is not what its protocol says (not JSON, a missing field...)."""


def is_retryable_status(status: int) -> bool:
    """True for an HTTP status another server (or a later try) may answer differently."""
    return status in RETRYABLE_STATUSES


def error_detail(body: bytes | str | Mapping[str, Any] | None) -> str:
    """The server's own explanation from an error body, in one short line.

    llama-server answers ``{"error": {"code", "message", "type"}}`` (server-common.cpp,
    ``format_error_response``; server-http.cpp for 401/503); llama-cpp-python's FastAPI
    server ``{"detail": "..."}`` (HTTPException) or ``{"error": {"message", ...}}``
    (llama_cpp/server/errors.py); vLLM ``{"error": {"message", ...}}`` or, in older
    versions, ``{"object": "error", "message": ...}``. Anything else is shown as text.
    """
    payload: Any = body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            payload = json.loads(body)
        except ValueError:
            return _short(body)
    if isinstance(payload, Mapping):
        inner = payload.get("error")
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return _short(inner["message"])
        if isinstance(inner, str):
            return _short(inner)
        for key in ("detail", "message"):
            value = payload.get(key)
            if isinstance(value, str):
                return _short(value)
            if value is not None:
                return _short(json.dumps(value, default=str))
    return _short("" if payload is None else str(payload))


def response_error(status: int, detail: str, *, server: str, action: str) -> ServerResponseError:
    """The error for a non-retryable status (``action``: what was asked, e.g. "POST /completion")."""
    shown = redact_url(server)
    if status in _AUTH_STATUSES:
        message = (
            f"{shown} refused {action} with HTTP {status} ({detail or 'unauthorized'}): "
            "check api_key (sent as 'Authorization: Bearer <api_key>')"
        )
    else:
        message = f"{shown} answered {action} with HTTP {status}: {detail or 'no detail'}"
    return ServerResponseError(message, status=status, server=server, detail=detail)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
