"""The wire protocols: a ``GenerationRequest`` as a request body, a reply as a ``WireChunk``.

No I/O here: each protocol builds ``(path, json_body)`` pairs and reads JSON payloads, so
everything about a server's dialect is testable without one. Field names were checked
against the servers' own sources (paths relative to llama.cpp's ``tools/server/`` and to
``llama_cpp/server/`` of llama-cpp-python 0.3.36; vLLM's ``entrypoints/openai/protocol.py``):

- ``LlamaServerProtocol``: llama.cpp's ``llama-server`` native ``/completion`` (request
  fields: server-schema.cpp ``make_llama_cmpl_schema``; replies: server-task.cpp
  ``to_json_non_oaicompat``), ``/tokenize`` (server-context.cpp ``post_tokenize``).
- ``OpenAIProtocol``: ``/v1/completions`` of llama-cpp-python's server (types.py
  ``CreateCompletionRequest``), of vLLM and of any OpenAI-compatible server.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal, Protocol, runtime_checkable

from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.json_schema import schema_from_options
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins import GenerationRequest
from serapeum.core.redact import redact_url
from serapeum.core.shown import shown
from serapeum_backend_server.errors import ServerProtocolError, ServerResponseError, error_detail

__all__ = [
    "IGNORED_OPTIONS",
    "NEVER_SENDABLE",
    "Dialect",
    "LlamaServerProtocol",
    "OpenAIProtocol",
    "WireChunk",
    "WireProtocol",
    "check_options",
    "gbnf_available",
    "supported_options",
]

Dialect = Literal["llama-cpp-python", "vllm", "openai"]

# The engine accepts these for create_completion compatibility and ignores them
# (serapeum.llama_cpp sampling: "they change nothing here"); so does every protocol.
IGNORED_OPTIONS = frozenset({"tfs_z", "penalize_nl"})
# Python objects: they run in the caller's process and cannot cross the wire.
NEVER_SENDABLE = frozenset({"logits_processor", "stopping_criteria"})


@frozen
class WireChunk:
    """One parsed event (or a whole non-streamed reply).

    ``finish_reason`` is set on the event that ends generation; ``usage``/``timing`` on the
    event(s) that carry them (an OpenAI stream may send usage in a later, choice-less
    event). ``timing.time_to_first_token`` is the server's own prompt time: the client,
    which also saw the queue and the network, should replace it with what it measured.
    ``slot`` is the llama-server slot that served the request (None when not reported).
    """

    delta: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None
    slot: int | None = None
    raw: dict[str, Any] = field(factory=dict, repr=False)


@runtime_checkable
class WireProtocol(Protocol):
    """What ``ServerModel`` needs from a protocol; both protocols below implement it."""

    @property
    def kind(self) -> str:
        """``"llama-server"`` or ``"openai"``."""
        ...

    @property
    def name(self) -> str:
        """A readable name for messages (``"llama-server"``, ``"openai (vllm)"``...)."""
        ...

    @property
    def supported_options(self) -> frozenset[str]:
        """The ``GenerationRequest.options`` names this protocol can carry."""
        ...

    @property
    def health_path(self) -> str:
        """A cheap GET that answers 200 when the server can take requests."""
        ...

    def completion_body(
        self, request: GenerationRequest, *, slot: int | None, stream: bool
    ) -> tuple[str, dict[str, Any]]: ...

    def parse_event(self, payload: Any) -> WireChunk: ...

    def tokenize_body(self, text: str) -> tuple[str, dict[str, Any]] | None: ...

    def parse_tokens(self, payload: Any) -> list[int]: ...


# -- options ------------------------------------------------------------------------------
_COMMON = frozenset({"seed", "top_p", "presence_penalty", "frequency_penalty", "logprobs"})
_LLAMA_SAMPLING = frozenset(
    {"top_k", "min_p", "repeat_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta"}
)
_LLAMA_SERVER_OPTIONS = (
    _COMMON
    | _LLAMA_SAMPLING
    | {"typical_p", "logit_bias", "grammar", "json_schema", "response_format"}
    | IGNORED_OPTIONS
)


@lru_cache(maxsize=1)
def gbnf_available() -> bool:
    """True when llama-cpp-python's JSON-schema-to-GBNF converter can be imported.

    llama-cpp-python's ``CreateCompletionRequest`` has ``grammar`` but no schema field,
    so a schema is sent as the GBNF ``llama_cpp.llama_grammar.json_schema_to_gbnf`` makes.
    """
    return importlib.util.find_spec("llama_cpp") is not None


def _openai_options(dialect: Dialect) -> frozenset[str]:
    if dialect == "llama-cpp-python":
        # CreateCompletionRequest (types.py): no typical_p (pydantic drops unknown fields
        # silently, so it is refused here rather than ignored there).
        extra = _LLAMA_SAMPLING | {"logit_bias", "grammar"}
        if gbnf_available():
            extra |= {"json_schema", "response_format"}
        return _COMMON | extra | IGNORED_OPTIONS
    if dialect == "vllm":
        # CompletionRequest's sampling extras; repeat_penalty travels as repetition_penalty.
        return _COMMON | {"top_k", "min_p", "repeat_penalty", "logit_bias"} | IGNORED_OPTIONS
    return _COMMON | {"logit_bias"} | IGNORED_OPTIONS


def supported_options(protocol: WireProtocol) -> frozenset[str]:
    """The option names ``protocol`` can carry (see ``check_options``)."""
    return protocol.supported_options


def check_options(protocol: WireProtocol, options: Mapping[str, Any], *, server: str = "") -> None:
    """Raise ``ConfigurationError`` for an option ``protocol`` cannot send, before any request.

    An option whose value is None is "not set" and always passes. The message names the
    option, the protocol and (redacted) server, and what the protocol does accept.
    """
    where = f" at {redact_url(server)}" if server else ""
    for name, value in options.items():
        if value is None:
            continue
        if name in NEVER_SENDABLE:
            raise ConfigurationError(
                f"{name} is a Python callable; it cannot be sent to the {protocol.name} "
                f"server{where}. Use the in-process llama-cpp backend for it"
            )
        if name not in protocol.supported_options:
            accepted = ", ".join(sorted(protocol.supported_options - IGNORED_OPTIONS))
            raise ConfigurationError(
                f"option {name!r} cannot be sent to the {protocol.name} server{where}; "
                f"this protocol carries: {accepted}"
            )
    _check_values(options)


_NUMBERS = (
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_tau",
    "mirostat_eta",
)
_INTEGERS = {"seed": -1, "top_k": 0, "mirostat_mode": 0, "logprobs": 0}


def _check_values(options: Mapping[str, Any]) -> None:
    """Refuse values no server would take (types, NaN), so the error is ours and early."""
    for name in _NUMBERS:
        value = options.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigurationError(f"{name} must be a finite number; got {shown(value)}")
    for name, low in _INTEGERS.items():
        value = options.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ConfigurationError(f"{name} must be an integer >= {low}; got {shown(value)}")
    grammar = options.get("grammar")
    if grammar is not None and not isinstance(grammar, str):
        raise ConfigurationError(
            f"grammar must be a GBNF grammar as a str for a server backend; got {shown(grammar)}"
        )
    if requested_schema(options) is not None and grammar is not None:
        raise ConfigurationError("give grammar or json_schema (or response_format), not both")
    _logit_bias_pairs(options.get("logit_bias"))


def requested_schema(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks for (``json_schema=`` or an OpenAI ``response_format``).

    Checked as the in-process backend checks it (``serapeum.core.json_schema``): a schema too
    deep, too large or admitting no finite value would hang or crash the server's grammar
    compiler, so it is refused here with a ``SchemaError``.
    """
    return schema_from_options(options)


def _logit_bias_pairs(value: Any) -> list[tuple[int, float]]:
    """``{token id (int or its decimal str): bias}`` as pairs; anything else refused."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"logit_bias must be a dict of token id -> bias, e.g. {{42: -100.0}}; got {shown(value)}"
        )
    pairs = []
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ConfigurationError(
                f"logit_bias keys must be token ids (ints >= 0); got {shown(key)}"
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not math.isfinite(bias):
            raise ConfigurationError(
                f"logit_bias values must be finite numbers; token {token} has {shown(bias)}"
            )
        pairs.append((token, float(bias)))
    return pairs


def _set_options(
    body: dict[str, Any], options: Mapping[str, Any], names: Mapping[str, str]
) -> None:
    for ours, theirs in names.items():
        value = options.get(ours)
        if value is not None:
            body[theirs] = value


# -- reading replies ----------------------------------------------------------------------
def _raise_if_error(payload: Any, server: str, what: str) -> dict[str, Any]:
    """``payload`` as a dict; an in-stream ``{"error": ...}`` event raises ServerResponseError.

    llama-server reports an error met mid-stream as ``data: {"error": {...}}`` and ends the
    stream (server-context.cpp, ``format_error``).
    """
    if not isinstance(payload, dict):
        raise ServerProtocolError(
            f"{redact_url(server) or 'the server'} sent a {what} that is not a JSON object: "
            f"{shown(payload)}",
            status=200,
            server=server,
        )
    if "error" in payload:
        error = payload["error"]
        status = error.get("code") if isinstance(error, Mapping) else None
        detail = error_detail(payload)
        raise ServerResponseError(
            f"{redact_url(server) or 'the server'} reported an error: {detail}",
            status=status if isinstance(status, int) and not isinstance(status, bool) else 500,
            server=server,
            detail=detail,
        )
    return payload


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def timing_from_timings(timings: Any) -> Timing | None:
    """``Timing`` from llama-server's ``timings`` object (server-common.cpp,
    ``server_slot_stats::to_json``: ``prompt_ms``, ``predicted_ms``, ``predicted_n``,
    ``predicted_per_second``...). None when the object is missing or malformed."""
    if not isinstance(timings, Mapping):
        return None
    prompt_ms = _number(timings.get("prompt_ms"))
    predicted_ms = _number(timings.get("predicted_ms"))
    if prompt_ms is None or predicted_ms is None:
        return None
    rate = _number(timings.get("predicted_per_second"))
    if rate is None:
        predicted = _number(timings.get("predicted_n")) or 0.0
        rate = predicted / (predicted_ms / 1000) if predicted_ms > 0 else 0.0
    return Timing(
        time_to_first_token=prompt_ms / 1000,
        prompt_seconds=prompt_ms / 1000,
        generation_seconds=predicted_ms / 1000,
        tokens_per_second=rate,
    )


def _openai_usage(usage: Any) -> Usage | None:
    """OpenAI ``usage``; ``prompt_tokens_details.cached_tokens`` when the server gives it
    (llama-server's OAI endpoints and vLLM do; llama-cpp-python does not)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, cached_prompt_tokens=cached or 0
    )


def _token_list(payload: Any, server: str) -> list[int]:
    tokens = payload.get("tokens") if isinstance(payload, Mapping) else None
    if not isinstance(tokens, list) or any(_int(token) is None for token in tokens):
        raise ServerProtocolError(
            f"{redact_url(server) or 'the server'} answered a tokenize request without a "
            f"list of token ids: {shown(payload)}",
            status=200,
            server=server,
        )
    return list(tokens)


# -- llama-server -------------------------------------------------------------------------
_LLAMA_SERVER_NAMES = {
    "seed": "seed",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat_mode": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "logprobs": "n_probs",
    "grammar": "grammar",
}
_STOP_TYPES = {"eos": FinishReason.STOP, "word": FinishReason.STOP, "limit": FinishReason.LENGTH}


@frozen
class LlamaServerProtocol:
    """llama.cpp's ``llama-server``, native endpoints.

    The prompt goes as token ids (``/completion`` takes ``[12, 34, ...]`` and adds no BOS
    to a token array: server-common.cpp ``tokenize_input_prompts``), so the server sees
    exactly the tokens the client counted, BOS included. ``cache_prompt`` keeps the slot's
    KV cache for the next request sharing a prefix; ``id_slot`` pins the request to a slot
    (-1 or absent: the server picks one).

    A stream is a series of ``{"content", "tokens", "stop": false, "id_slot": -1,
    "tokens_predicted", "tokens_evaluated"}`` events; the last of them also has
    ``timings``; then one ``stop: true`` event (``content`` "" in stream mode) with
    ``stop_type`` (eos/word/limit), ``id_slot``, ``tokens_evaluated`` (the whole prompt),
    ``tokens_predicted``, ``tokens_cached`` (the slot's cache after the request: prompt
    plus generated tokens, not the reused part; that is ``timings.cache_n``) and
    ``timings``. No ``[DONE]`` ends a native stream. A non-streamed reply is that final
    object with the whole ``content``.
    """

    server: str = field(default="", repr=redact_url)
    kind: str = field(default="llama-server", init=False)
    name: str = field(default="llama-server", init=False)
    health_path: str = field(default="/health", init=False)
    supported_options: frozenset[str] = field(default=_LLAMA_SERVER_OPTIONS, init=False)

    def completion_body(
        self, request: GenerationRequest, *, slot: int | None, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        """``POST /completion`` with the request's token ids and mapped sampling options."""
        options = request.options
        body: dict[str, Any] = {
            "prompt": list(request.prompt_tokens),
            "n_predict": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop),
            "stream": stream,
            "cache_prompt": True,
        }
        if slot is not None:
            body["id_slot"] = slot
        _set_options(body, options, _LLAMA_SERVER_NAMES)
        bias = _logit_bias_pairs(options.get("logit_bias"))
        if bias:
            body["logit_bias"] = [[token, value] for token, value in bias]
        schema = requested_schema(options)
        if schema is not None:
            body["json_schema"] = schema
        return "/completion", body

    def parse_event(self, payload: Any) -> WireChunk:
        """A streamed event or a whole reply of ``/completion``."""
        event = _raise_if_error(payload, self.server, "completion event")
        content = event.get("content", "")
        if not isinstance(content, str):
            raise ServerProtocolError(
                f"{redact_url(self.server) or 'the server'} sent a completion event whose "
                f"content is not text: {shown(event)}",
                status=200,
                server=self.server,
            )
        timings = event.get("timings")
        if timings is None and event.get("stop") is not True:
            return WireChunk(delta=content, raw=event)  # most events: a piece of text
        finish: FinishReason | None = None
        usage: Usage | None = None
        if event.get("stop") is True:
            finish = _STOP_TYPES.get(str(event.get("stop_type")), FinishReason.STOP)
            prompt, predicted = (
                _int(event.get("tokens_evaluated")),
                _int(event.get("tokens_predicted")),
            )
            if prompt is not None and predicted is not None:
                cached = _int(timings.get("cache_n")) if isinstance(timings, Mapping) else None
                usage = Usage(
                    prompt_tokens=prompt,
                    completion_tokens=predicted,
                    cached_prompt_tokens=cached or 0,
                )
        slot = _int(event.get("id_slot"))
        return WireChunk(
            delta=content,
            finish_reason=finish,
            usage=usage,
            timing=timing_from_timings(timings),
            slot=slot if slot is not None and slot >= 0 else None,
            raw=event,
        )

    def tokenize_body(self, text: str) -> tuple[str, dict[str, Any]]:
        """``POST /tokenize``: no BOS added (the engine adds it once), special tokens parsed."""
        return "/tokenize", {"content": text, "add_special": False, "parse_special": True}

    def parse_tokens(self, payload: Any) -> list[int]:
        return _token_list(payload, self.server)


# -- OpenAI-compatible --------------------------------------------------------------------
_OPENAI_NAMES: dict[Dialect, dict[str, str]] = {
    "openai": {name: name for name in _COMMON},
    "llama-cpp-python": {
        **{name: name for name in _COMMON | _LLAMA_SAMPLING},
        "grammar": "grammar",
    },
    "vllm": {
        **{name: name for name in _COMMON | {"top_k", "min_p"}},
        "repeat_penalty": "repetition_penalty",
    },
}
_FINISH = {"stop": FinishReason.STOP, "eos": FinishReason.STOP, "length": FinishReason.LENGTH}


def _schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    return _gbnf_of(json.dumps(schema))  # key order kept: it is the order of the properties


@lru_cache(maxsize=64)
def _gbnf_of(schema_json: str) -> str:
    """The GBNF of a schema (cached: structured-output callers repeat the same schema)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    converted: Callable[[str], str] = json_schema_to_gbnf
    try:
        return converted(schema_json)
    except Exception as exc:  # the converter raises plain exceptions for what it cannot do
        raise ConfigurationError(
            f"json_schema cannot be turned into a GBNF grammar: {exc}"
        ) from None


@frozen
class OpenAIProtocol:
    """An OpenAI-compatible ``/v1/completions`` server.

    ``dialect`` says which server it is, which decides the options it can carry and how
    the prompt travels:

    - ``"llama-cpp-python"``: ``prompt`` must be text (``Union[str, List[str]]``; a
      token-id list is refused with a 500); the server adds BOS itself when the model asks
      for one and parses special tokens in the text, so a prompt text that starts with the
      BOS text (``bos_text``) is sent without it, or the model would see BOS twice.
      ``grammar`` is GBNF; a JSON schema is sent as GBNF too. Streams carry no ``usage``
      (``stream_options`` is not a field; pydantic drops it) and no timings. Tokenize:
      ``POST /extras/tokenize {"input"}`` (``Llama.tokenize(..., special=True)`` with its
      default ``add_bos=True``), so a leading BOS is removed from the answer when
      ``adds_bos``.
    - ``"vllm"``: ``prompt`` may be token ids (``CompletionRequest.prompt`` takes
      ``list[int]``), so they are sent as they are; ``repeat_penalty`` travels as
      ``repetition_penalty``; streams end with a ``usage`` event when
      ``stream_options.include_usage`` is set. Tokenize: ``POST /tokenize {"model",
      "prompt", "add_special_tokens": false}`` -> ``{"tokens", "count", "max_model_len"}``.
    - ``"openai"``: the common OpenAI fields only; no tokenize unless ``tokenize_path``.
    """

    model: str
    tokenize_path: str | None = None
    dialect: Dialect = "openai"
    adds_bos: bool = False
    bos_id: int | None = None
    bos_text: str = ""
    server: str = field(default="", repr=redact_url)
    kind: str = field(default="openai", init=False)

    @property
    def name(self) -> str:
        return f"openai ({self.dialect})"

    @property
    def health_path(self) -> str:
        return "/health" if self.dialect == "vllm" else "/v1/models"

    @property
    def supported_options(self) -> frozenset[str]:
        return _openai_options(self.dialect)

    @property
    def token_prompt(self) -> bool:
        """Whether the prompt is sent as token ids (exact) rather than text."""
        return self.dialect == "vllm"

    def completion_body(
        self, request: GenerationRequest, *, slot: int | None, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        """``POST /v1/completions``; ``slot`` is ignored (these servers have none)."""
        del slot
        options = request.options
        body: dict[str, Any] = {
            "prompt": self._prompt(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop),
            "stream": stream,
        }
        if self.model:
            body["model"] = self.model
        if stream and self.dialect != "llama-cpp-python":
            body["stream_options"] = {"include_usage": True}
        _set_options(body, options, _OPENAI_NAMES[self.dialect])
        bias = _logit_bias_pairs(options.get("logit_bias"))
        if bias and "logit_bias" in self.supported_options:
            body["logit_bias"] = {str(token): value for token, value in bias}
        schema = requested_schema(options)
        if schema is not None and "json_schema" in self.supported_options:
            body["grammar"] = _schema_to_gbnf(schema)
        return "/v1/completions", body

    def _prompt(self, request: GenerationRequest) -> str | list[int]:
        if self.token_prompt:
            return list(request.prompt_tokens)
        text = request.prompt_text
        if text is None:
            raise ConfigurationError(
                f"the {self.name} protocol sends the prompt as text, and this request has "
                "no prompt_text (only token ids)"
            )
        if self.adds_bos and self.bos_text and text.startswith(self.bos_text):
            return text[len(self.bos_text) :]
        return text

    def parse_event(self, payload: Any) -> WireChunk:
        """A streamed chunk or a whole reply: ``choices[0].text``/``finish_reason``, ``usage``.

        A chunk without choices (vLLM's final usage event) has an empty delta. Finish
        reasons other than "stop"/"length" (vLLM's "abort"...) count as STOP.
        """
        event = _raise_if_error(payload, self.server, "completion event")
        choices = event.get("choices")
        delta, finish = "", None
        if choices:
            choice = choices[0] if isinstance(choices, list) else None
            text = choice.get("text", "") if isinstance(choice, Mapping) else None
            if not isinstance(text, str):
                raise ServerProtocolError(
                    f"{redact_url(self.server) or 'the server'} sent a completion without "
                    f"choices[0].text: {shown(event)}",
                    status=200,
                    server=self.server,
                )
            delta = text
            reason = choice.get("finish_reason") if isinstance(choice, Mapping) else None
            if reason is not None:
                finish = _FINISH.get(str(reason), FinishReason.STOP)
        elif choices is None and "usage" not in event:
            raise ServerProtocolError(
                f"{redact_url(self.server) or 'the server'} sent a completion without "
                f"choices: {shown(event)}",
                status=200,
                server=self.server,
            )
        return WireChunk(
            delta=delta,
            finish_reason=finish,
            usage=_openai_usage(event.get("usage")),
            timing=timing_from_timings(event.get("timings")),
            slot=None,
            raw=event,
        )

    def tokenize_body(self, text: str) -> tuple[str, dict[str, Any]] | None:
        if self.tokenize_path is None:
            return None
        if self.dialect == "llama-cpp-python":
            return self.tokenize_path, {"input": text, "model": self.model}
        return self.tokenize_path, {
            "model": self.model,
            "prompt": text,
            "add_special_tokens": False,
        }

    def parse_tokens(self, payload: Any) -> list[int]:
        tokens = _token_list(payload, self.server)
        if (
            self.dialect == "llama-cpp-python"
            and self.adds_bos
            and tokens
            and tokens[0] == self.bos_id
        ):
            return tokens[1:]  # the BOS Llama.tokenize added (add_bos=True is its default)
        return tokens
