"""OpenAI-style error bodies, and the HTTP status each of our errors deserves.

A client's mistake (any ``ConfigurationError``: a bad option value, a bad schema; a prompt
that does not fit: ``ContextWindowExceededError``; a JSON answer cut short by max_tokens) is
a 400 with our message, the library's option names in it replaced by the request fields that
set them (``max_new_tokens`` -> ``max_tokens``), since the client never used the former. A full queue is a 503 with ``Retry-After``. Anything else is a 500
whose body says nothing of the internals; the traceback goes to the server's log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from serapeum.core.errors import ConfigurationError, IncompleteJSONError, SchemaError
from serapeum.llama_cpp.errors import (
    ChatTemplateError,
    ContextWindowExceededError,
    InvalidRequestError,
    QueueFullError,
)

__all__ = ["Failure", "InvalidRequestError", "error_body", "failure_for", "in_request_words"]

logger = logging.getLogger("serapeum.llama_cpp.serve")

# Seconds a client is asked to wait before retrying when every slot and the queue are full.
RETRY_AFTER_SECONDS = 1


def error_body(
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI's clients parse."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@frozen
class Failure:
    """What to answer for an exception: status, body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


_CLIENT_ERRORS = (
    ConfigurationError,
    ContextWindowExceededError,
    IncompleteJSONError,
    ChatTemplateError,
)


def in_request_words(message: str, fields: Mapping[str, str]) -> str:
    """``message`` with each library name in ``fields`` replaced by its request field."""
    if not fields:
        return message
    names = sorted(fields, key=len, reverse=True)  # max_new_tokens before max_tokens
    pattern = rf"(?<![\w.-])({'|'.join(map(re.escape, names))})(?![\w-])"
    return re.sub(pattern, lambda found: fields[found.group(1)], message)


def _param(exc: Exception, fields: Mapping[str, str]) -> str | None:
    """The request field to blame for a library error, where one clearly is."""
    if isinstance(exc, IncompleteJSONError):
        return fields.get("max_new_tokens")
    if isinstance(exc, SchemaError):
        return fields.get("json_schema")
    return None


def failure_for(exc: Exception, fields: Mapping[str, str] | None = None) -> Failure:
    """The answer for ``exc`` raised while serving a request.

    ``fields``: library option name -> the request field that set it (``Call.fields``), for
    the library's messages; the server's own (``InvalidRequestError``) already name fields.
    """
    fields = fields or {}
    if isinstance(exc, InvalidRequestError):
        return Failure(400, error_body(str(exc), param=exc.param, code=exc.code), {})
    message = in_request_words(str(exc), fields)
    if isinstance(exc, ContextWindowExceededError):
        return Failure(400, error_body(message, code="context_length_exceeded"), {})
    if isinstance(exc, _CLIENT_ERRORS):
        return Failure(400, error_body(message, param=_param(exc, fields)), {})
    if isinstance(exc, QueueFullError):
        body = error_body(str(exc), kind="server_busy", code="queue_full")
        return Failure(503, body, {"Retry-After": str(RETRY_AFTER_SECONDS)})
    logger.error("serving a request failed", exc_info=exc)
    body = error_body("the server failed to answer this request", kind="server_error")
    return Failure(500, body, {})
