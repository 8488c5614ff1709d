"""Find out what a server is (llama-server or OpenAI-compatible) and what it says about its model.

``describe_server`` is cheap: a llama-server costs ``GET /props`` and one ``POST /tokenize``;
llama-cpp-python's server ``GET /props`` (404), ``GET /v1/models`` and one to three
``POST /extras/tokenize``; vLLM ``GET /props`` (404) and ``GET /v1/models``. Every network
problem becomes ``ServerUnavailableError`` (try another server, or later) and every answer
that retrying will not change ``ServerResponseError`` (401/403: "check api_key"), both with
the URL redacted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.redact import redact_text, redact_url
from serapeum.core.shown import shown
from serapeum_backend_server.errors import (
    ServerProtocolError,
    ServerUnavailableError,
    error_detail,
    is_retryable_status,
    response_error,
)
from serapeum_backend_server.options import ServerOptions
from serapeum_backend_server.protocols import (
    LlamaServerProtocol,
    OpenAIProtocol,
    WireProtocol,
)

__all__ = ["BOS_CANDIDATES", "ServerDescription", "check_health", "describe_server"]

# The BOS texts of common GGUF vocabularies (Llama 2/Mistral, Llama 3, Gemma, Yi/others,
# GPT-2 style). llama-cpp-python's server cannot say its model's BOS text (no /props, and
# /extras/detokenize renders special tokens as ""), but the prompt text must be sent
# without it; the first candidate that tokenizes to the BOS id is it.
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>")


@frozen
class ServerDescription:
    """What one server said about itself; ``protocol`` speaks to it.

    ``n_ctx`` is the server's context per request (llama-server's per-slot ``n_ctx``,
    vLLM's ``max_model_len``; None when it does not say: llama-cpp-python). ``slots`` is
    how many requests it runs at once (llama-server's ``total_slots``; 1 when unknown).
    ``adds_bos``: the model wants a BOS token first (found by tokenizing with the server).
    ``bos_id``: the BOS token id, None when unknown or the model has none.
    """

    url: str = field(repr=redact_url)
    protocol: WireProtocol
    n_ctx: int | None
    slots: int
    chat_template: str | None = field(repr=False)
    bos_token: str
    eos_token: str
    bos_id: int | None
    adds_bos: bool
    model_id: str
    can_tokenize: bool
    raw_props: Mapping[str, Any] = field(factory=dict, repr=False)


def describe_server(client: httpx.Client, url: str, options: ServerOptions) -> ServerDescription:
    """Ask the server at ``url`` (a base URL from ``options.urls``) what it is.

    ``options.protocol`` "auto" tries llama-server's ``GET /props`` first and falls back to
    ``GET /v1/models``; "llama-server" or "openai" skips the other. ``client`` carries the
    timeouts, TLS settings and API key (``Authorization: Bearer``).
    """
    link = _Link(client, url)
    if options.protocol in ("auto", "llama-server"):
        status, props = link.get("/props", allow=(404, 405))
        if status == 200 and _is_llama_server(props):
            return _describe_llama_server(link, props)
        if options.protocol == "llama-server":
            raise ServerProtocolError(
                f"{link.shown} is not a llama.cpp llama-server: GET /props answered "
                f"{status} {shown(props, 200)}; use protocol='openai' for an "
                "OpenAI-compatible server",
                status=status,
                server=url,
            )
    return _describe_openai(link, options)


def check_health(client: httpx.Client, description: ServerDescription) -> None:
    """Raise unless the server answers its health check (for a server that was down).

    llama-server's ``/health`` is public (no API key) and answers 503 while loading;
    llama-cpp-python's server has no ``/health``, so ``/v1/models`` stands in.
    """
    _Link(client, description.url).get(description.protocol.health_path)


# -- llama-server -------------------------------------------------------------------------
def _is_llama_server(props: Any) -> bool:
    """/props of llama-server (server-context.cpp ``get_res_props``) has these keys."""
    return isinstance(props, dict) and (
        "default_generation_settings" in props or "total_slots" in props
    )


def _describe_llama_server(link: _Link, props: dict[str, Any]) -> ServerDescription:
    protocol = LlamaServerProtocol(server=link.url)
    settings = props.get("default_generation_settings")
    n_ctx = _positive_int(settings.get("n_ctx")) if isinstance(settings, Mapping) else None
    bos_text = _text(props.get("bos_token"))
    # One request gives both facts: the BOS text tokenized with add_special is [bos, bos]
    # when the model adds BOS itself, [bos] when it does not; "" with add_special: [] / [bos].
    _, body = protocol.tokenize_body(bos_text)
    body["add_special"] = True
    tokens = protocol.parse_tokens(link.post("/tokenize", body))
    if bos_text:
        adds_bos = len(tokens) >= 2 and tokens[0] == tokens[1]
        bos_id = tokens[0] if tokens else None
    else:
        adds_bos = bool(tokens)
        bos_id = tokens[0] if tokens else None
    model_id = _text(props.get("model_alias")) or _text(props.get("model_path")) or "llama-server"
    return ServerDescription(
        url=link.url,
        protocol=protocol,
        n_ctx=n_ctx,
        slots=_positive_int(props.get("total_slots")) or 1,
        chat_template=_text(props.get("chat_template")) or None,
        bos_token=bos_text,
        eos_token=_text(props.get("eos_token")),
        bos_id=bos_id,
        adds_bos=adds_bos,
        model_id=model_id,
        can_tokenize=True,
        raw_props=props,
    )


# -- OpenAI-compatible --------------------------------------------------------------------
def _describe_openai(link: _Link, options: ServerOptions) -> ServerDescription:
    status, listing = link.get("/v1/models", allow=(404, 405))
    models = listing.get("data") if isinstance(listing, dict) else None
    if status != 200 or not isinstance(models, list) or not models:
        raise ServerProtocolError(
            f"{link.shown} is neither a llama.cpp llama-server (no GET /props) nor an "
            f"OpenAI-compatible server (GET /v1/models answered {status} "
            f"{shown(listing, 200)}); check the URL",
            status=status,
            server=link.url,
        )
    card = _pick_model(link, models, options.model)
    model_id = str(card["id"])
    if card.get("owned_by") == "vllm":
        # vLLM's ModelCard (entrypoints/openai/protocol.py): owned_by "vllm", max_model_len
        protocol = OpenAIProtocol(model_id, "/tokenize", "vllm", server=link.url)
        return _openai_description(link, protocol, card, _positive_int(card.get("max_model_len")))
    # llama-cpp-python's server (owned_by "me") is recognised by its /extras/tokenize.
    status, answer = link.post_allowing(
        "/extras/tokenize", {"input": "", "model": model_id}, allow=(404, 405, 422)
    )
    if status != 200:
        protocol = OpenAIProtocol(model_id, None, "openai", server=link.url)
        return _openai_description(link, protocol, card, None, can_tokenize=False)
    probe = OpenAIProtocol(model_id, "/extras/tokenize", "llama-cpp-python", server=link.url)
    empty = probe.parse_tokens(answer)  # [bos] when the model adds BOS, else []
    adds_bos, bos_id = bool(empty), (empty[0] if empty else None)
    bos_text = _find_bos_text(link, model_id, bos_id) if bos_id is not None else ""
    protocol = OpenAIProtocol(
        model_id,
        "/extras/tokenize",
        "llama-cpp-python",
        adds_bos=adds_bos,
        bos_id=bos_id,
        bos_text=bos_text,
        server=link.url,
    )
    return _openai_description(
        link, protocol, card, None, adds_bos=adds_bos, bos_id=bos_id, bos_token=bos_text
    )


def _pick_model(link: _Link, models: list[Any], wanted: str | None) -> Mapping[str, Any]:
    cards = [
        card for card in models if isinstance(card, Mapping) and isinstance(card.get("id"), str)
    ]
    if not cards:
        raise ServerProtocolError(
            f"{link.shown} listed no model ids in GET /v1/models: {shown(models, 200)}",
            status=200,
            server=link.url,
        )
    ids = [card["id"] for card in cards]
    if wanted is not None:
        for card in cards:
            if card["id"] == wanted:
                return card
        raise ConfigurationError(
            f"model={wanted!r} is not served by {link.shown}; it serves: {', '.join(ids[:20])}"
        )
    if len(cards) > 1:
        raise ConfigurationError(
            f"{link.shown} serves {len(cards)} models; choose one with model=..., one of: "
            f"{', '.join(ids[:20])}"
        )
    return cards[0]


def _find_bos_text(link: _Link, model_id: str, bos_id: int) -> str:
    """The BOS text, found by tokenizing candidates (``Llama.tokenize(special=True)`` adds
    one BOS, so the right candidate gives ``[bos, bos]``); "" when none matches."""
    for candidate in BOS_CANDIDATES:
        answer = link.post("/extras/tokenize", {"input": candidate, "model": model_id})
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if tokens == [bos_id, bos_id]:
            return candidate
    return ""


def _openai_description(
    link: _Link,
    protocol: OpenAIProtocol,
    card: Mapping[str, Any],
    n_ctx: int | None,
    *,
    can_tokenize: bool = True,
    adds_bos: bool = False,
    bos_id: int | None = None,
    bos_token: str = "",
) -> ServerDescription:
    return ServerDescription(
        url=link.url,
        protocol=protocol,
        n_ctx=n_ctx,
        slots=1,
        chat_template=None,
        bos_token=bos_token,
        eos_token="",
        bos_id=bos_id,
        adds_bos=adds_bos,
        model_id=str(card["id"]),
        can_tokenize=can_tokenize,
        raw_props=dict(card),
    )


# -- HTTP ---------------------------------------------------------------------------------
class _Link:
    """GET/POST JSON against one server, turning every failure into one of our errors."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client = client
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)

    def get(self, path: str, *, allow: tuple[int, ...] = ()) -> tuple[int, Any]:
        return self._call("GET", path, None, allow)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body, ())[1]

    def post_allowing(
        self, path: str, body: dict[str, Any], *, allow: tuple[int, ...]
    ) -> tuple[int, Any]:
        return self._call("POST", path, body, allow)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, allow: tuple[int, ...]
    ) -> tuple[int, Any]:
        action = f"{method} {path}"
        try:
            response = self.client.request(method, self.url + path, json=body)
        except httpx.TimeoutException as exc:
            raise self._unavailable(f"{action} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            reason = redact_text(str(exc)) or type(exc).__name__
            raise self._unavailable(f"{action} failed: cannot connect ({reason})") from None
        status = response.status_code
        if status in allow:
            return status, _json_or_text(response)
        if is_retryable_status(status):
            detail = error_detail(response.content)
            raise self._unavailable(f"{action} answered HTTP {status} ({detail or 'busy'})")
        if status != 200:
            raise response_error(
                status, error_detail(response.content), server=self.url, action=action
            )
        try:
            return status, response.json()
        except ValueError:
            raise ServerProtocolError(
                f"{self.shown} answered {action} with something that is not JSON "
                f"({shown(response.text, 120)}); is this an LLM server?",
                status=status,
                server=self.url,
            ) from None

    def _unavailable(self, problem: str) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"{self.shown} is unavailable: {problem}", problems={self.url: problem}
        )


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
