"""OpenAI's request JSON to our calls, and our responses to OpenAI's response JSON.

Only the translation lives here (no HTTP): ``parse_completion`` and ``parse_chat`` check a
request body and say what to call, ``Reply`` writes the answer, whole or streamed.
"""

from __future__ import annotations

import numbers
import time
import uuid
from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen

from serapeum.core.llms import ChatResponse, CompletionResponse, FinishReason, Message, Usage
from serapeum.llama_cpp.errors import InvalidRequestError

__all__ = [
    "DEFAULT_FIELDS",
    "Call",
    "Reply",
    "Response",
    "model_entry",
    "model_list",
    "parse_chat",
    "parse_completion",
]

# Options passed on under the same name: LlamaCPP's per-call options check their values.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop")

# Fields asking for what this server does not do; refused when set to anything but "off".
_UNSUPPORTED: dict[str, str] = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logprobs": "logprobs are not supported",
    "top_logprobs": "logprobs are not supported",
    "logit_bias": "logit_bias is not supported",
    "suffix": "suffix (insertion) is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
}
# The values of those fields that ask for nothing.
_OFF_VALUES: tuple[Any, ...] = (None, False, [], {}, "none", "", 0)

_ROLES = ("system", "user", "assistant")


@frozen
class Call:
    """What one request asks of the model.

    ``prompt`` is raw text for ``acomplete(..., formatted=True)``, or the messages for
    ``achat``; ``options`` are the per-call keyword arguments. ``fields`` maps an option's
    library name to the request field it came from (``max_new_tokens`` -> ``max_tokens``), so
    the library's error messages can speak the client's words.
    """

    prompt: str | tuple[Message, ...]
    options: dict[str, Any]
    stream: bool
    include_usage: bool
    fields: dict[str, str] = field(factory=dict)


def _body(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    return {key: value for key, value in payload.items() if value is not None}


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false", param=name)
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", param=name)
    return int(value)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name, reason in _UNSUPPORTED.items():
        value = body.get(name)
        if not any(value is off or value == off for off in _OFF_VALUES):
            raise InvalidRequestError(f"{name}: {reason} by this server", param=name)
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise InvalidRequestError(
            f"n must be 1: this server returns one choice per request, got {n!r}", param="n"
        )
    best_of = body.get("best_of", 1)
    if best_of != 1 or isinstance(best_of, bool):
        raise InvalidRequestError(f"best_of must be 1, got {best_of!r}", param="best_of")
    if body.get("echo", False) is not False:
        raise InvalidRequestError("echo is not supported by this server", param="echo")


def _response_format(value: Any) -> dict[str, Any] | None:
    """The JSON Schema to constrain decoding to, or None for plain text."""
    if not isinstance(value, Mapping):
        raise InvalidRequestError("response_format must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(
                'response_format of type "json_schema" needs json_schema.schema, a JSON Schema '
                "object",
                param="response_format.json_schema.schema",
            )
        return dict(schema)
    raise InvalidRequestError(
        f'response_format.type must be "text", "json_object" or "json_schema", got {kind!r}',
        param="response_format.type",
    )


# The library's names for the options a request sets under other names (before the request
# is read: a server-wide default the request did not override has the same names).
DEFAULT_FIELDS: dict[str, str] = {
    "max_new_tokens": "max_tokens",
    "max_tokens": "max_tokens",  # the backend's spelling of max_new_tokens
    "json_schema": "response_format",
}


def _options(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The per-call options, and which request field each library name came from."""
    _refuse_unsupported(body)
    options = {name: body[name] for name in _SAME_NAME if name in body}
    fields = dict(DEFAULT_FIELDS)
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins
        if name in body:
            options["max_new_tokens"] = _positive_int(body[name], name)
            fields["max_new_tokens"] = fields["max_tokens"] = name
            break
    if "response_format" in body:
        schema = _response_format(body["response_format"])
        if schema is not None:
            options["json_schema"] = schema
            if body["response_format"].get("type") == "json_schema":
                fields["json_schema"] = "response_format.json_schema.schema"
    return options, fields


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options", {})
    if not isinstance(stream_options, Mapping):
        raise InvalidRequestError("stream_options must be an object", param="stream_options")
    value = stream_options.get("include_usage", False)
    if not isinstance(value, bool):
        raise InvalidRequestError(
            "stream_options.include_usage must be true or false",
            param="stream_options.include_usage",
        )
    return value


def _call(body: Mapping[str, Any], prompt: str | tuple[Message, ...]) -> Call:
    options, fields = _options(body)
    return Call(
        prompt=prompt,
        options=options,
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        fields=fields,
    )


def parse_completion(payload: Any) -> Call:
    """A ``/v1/completions`` body: ``prompt`` is one string (or a list holding one)."""
    body = _body(payload)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequestError(
            "prompt must be a string (one prompt per request; token arrays are not supported)",
            param="prompt",
        )
    return _call(body, prompt)


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequestError(f"{where} must be a string or a list of text parts", param=where)
    texts = []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(text, str):
            raise InvalidRequestError(
                f'{where}[{index}] must be {{"type": "text", "text": "..."}}; only text parts '
                f"are supported, got type {kind!r}",
                param=f"{where}[{index}]",
            )
        texts.append(text)
    return "".join(texts)


def _message(value: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where} must be an object", param=where)
    role = value.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(
            f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param=f"{where}.role"
        )
    if value.get("tool_calls") or value.get("function_call"):
        raise InvalidRequestError(
            f"{where}: tool calls are not supported by this server", param=f"{where}.tool_calls"
        )
    return Message(role=role, content=_content(value.get("content"), f"{where}.content"))


def parse_chat(payload: Any) -> Call:
    """A ``/v1/chat/completions`` body: a non-empty list of system, user, assistant messages."""
    body = _body(payload)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    return _call(body, tuple(_message(value, index) for index, value in enumerate(messages)))


def _finish_reason(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


def model_list(model_id: str, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one model this server runs."""
    return {"object": "list", "data": [model_entry(model_id, created)]}


def model_entry(model_id: str, created: int) -> dict[str, Any]:
    """``GET /v1/models/{id}``: one model's entry."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "serapeum"}


Response = CompletionResponse | ChatResponse


@define
class Reply:
    """Writes one request's answer: whole (``whole``) or as stream chunks (``chunk``, ``finish``).

    ``chat`` picks the chat shapes (``chat.completion``) over the completion ones
    (``text_completion``). A stream remembers the last ``usage`` and ``finish_reason`` seen.
    """

    model_id: str
    chat: bool
    include_usage: bool = False
    id: str = field(init=False)
    created: int = field(init=False, factory=lambda: int(time.time()))
    _usage: Usage | None = field(init=False, default=None)
    _finish: FinishReason | None = field(init=False, default=None)
    _started: bool = field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id}

    def whole(self, response: Response) -> dict[str, Any]:
        reason = _finish_reason(response.finish_reason)
        if isinstance(response, ChatResponse):
            message = {"role": "assistant", "content": response.message.content}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            head = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": response.text, "logprobs": None, "finish_reason": reason}
            head = self._head("text_completion")
        return {**head, "choices": [choice], "usage": _usage(response.usage)}

    def _chunk(self, content: str | None, role: bool, reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            choice["delta"] = delta
        else:
            choice["text"] = content or ""
        choice.update(logprobs=None, finish_reason=reason)
        payload = {**self._head("chat.completion.chunk" if self.chat else "text_completion")}
        payload["choices"] = [choice]
        if self.include_usage:
            payload["usage"] = None
        return payload

    def chunk(self, response: Response) -> list[dict[str, Any]]:
        """The stream events for one of our chunks (none for an empty one)."""
        if response.usage is not None:
            self._usage = response.usage
        if response.finish_reason is not None:
            self._finish = response.finish_reason
        events = []
        if self.chat and not self._started:  # OpenAI's first chat chunk carries the role
            events.append(self._chunk("", role=True, reason=None))
        self._started = True
        if response.delta:
            events.append(self._chunk(response.delta, role=False, reason=None))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events: the finish reason, then the usage when it was asked for."""
        events = []
        if self.chat and not self._started:
            events.append(self._chunk("", role=True, reason=None))
        events.append(self._chunk(None, role=False, reason=_finish_reason(self._finish)))
        if self.include_usage:
            events.append(
                {**self._head(events[-1]["object"]), "choices": [], "usage": _usage(self._usage)}
            )
        return events
