"""Turning the engine's load options into a ``ServerModel``: one client, every server asked."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import attrs
import httpx

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.redact import redact_url
from serapeum_backend_server.detect import ServerDescription, describe_server
from serapeum_backend_server.errors import ServerUnavailableError
from serapeum_backend_server.model import ServerModel
from serapeum_backend_server.options import ServerOptions, server_options

logger = logging.getLogger("serapeum.backend.server")

# Settings the engine passes to every backend that mean nothing to servers.
_ENGINE_ONLY = frozenset({"verbose"})
# What the engine fills in from LlamaCPP's own fields (server_urls, api_key, context_window).
_FROM_ENGINE = frozenset({"urls", "api_key", "n_ctx"})


def check_server_kwargs(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check ``model_kwargs`` for the server backend at construction (no network).

    The servers and the key come from ``LlamaCPP(server_urls=..., api_key=...)``; the rest
    (timeouts, TLS, routing, protocol) from ``model_kwargs``.
    """
    taken = sorted(_FROM_ENGINE & set(kwargs))
    if taken:
        raise ConfigurationError(
            f"give {', '.join(taken)} as LlamaCPP(server_urls=..., api_key=..., "
            "context_window=...), not in model_kwargs"
        )
    server_options({"urls": ("http://127.0.0.1",), **kwargs})  # raises naming the key
    return kwargs


def tls_verification(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx's ``verify``: True/False, or a context trusting a CA bundle file or folder."""
    if isinstance(verify, bool):
        return verify
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def client_for(options: ServerOptions) -> httpx.Client:
    """One pooled client for every server: timeouts, TLS verification and bearer auth."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=options.connect_timeout,
            read=options.read_timeout,
            write=options.read_timeout,
            pool=options.read_timeout,
        ),
        verify=tls_verification(options.verify),
        headers=headers,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        trust_env=True,
    )


def connect(path: Path | None, options: Mapping[str, Any]) -> ServerModel:
    """Ask every server what it is; servers down now join the pool as down (retried later).

    Raises ``ServerUnavailableError`` when none answers, ``ConfigurationError`` when they
    do not serve the same kind of thing (mixed protocols, or different models).
    """
    if path is not None:
        raise ConfigurationError("the server backend loads no local file; its servers hold it")
    checked = server_options({k: v for k, v in options.items() if k not in _ENGINE_ONLY})
    client = client_for(checked)
    try:
        return _connect(client, checked)
    except BaseException:
        client.close()
        raise


def _connect(client: httpx.Client, options: ServerOptions) -> ServerModel:
    found: dict[int, ServerDescription] = {}
    problems: dict[int, str] = {}
    for index, url in enumerate(options.urls):
        try:
            found[index] = describe_server(client, url, options)
        except ServerUnavailableError as exc:
            problems[index] = str(exc)
    if not found:
        raise ServerUnavailableError(
            problems={options.urls[i]: problem for i, problem in problems.items()}
        )
    _require_one_kind(list(found.values()))
    model = next(iter(found.values()))
    # A server down now is assumed to be like the others until it answers (then described).
    servers = [
        found[i]
        if i in found
        else attrs.evolve(
            model, url=url, protocol=attrs.evolve(cast(Any, model.protocol), server=url)
        )
        for i, url in enumerate(options.urls)
    ]
    for index, problem in problems.items():
        logger.warning(
            "%s is down at start (%s); it joins when it answers",
            redact_url(options.urls[index]),
            problem,
        )
    servers = [_own_template(client, server) for server in servers]
    return ServerModel(options, client, servers, down=problems, undescribed=problems)


# What llama-server reports as the chat template of a model that has none (common/chat.cpp,
# CHATML_TEMPLATE_SRC): a ChatML fallback, which is no evidence of the model's format.
LLAMA_SERVER_FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)


def _own_template(client: httpx.Client, server: ServerDescription) -> ServerDescription:
    """Drop llama-server's ChatML fallback unless the vocabulary really has ChatML's markers."""
    if server.chat_template != LLAMA_SERVER_FALLBACK_TEMPLATE:
        return server
    route = server.protocol.tokenize_body("<|im_start|>")
    if route is not None:
        path, body = route
        try:
            response = client.post(server.url + path, json=body)
            tokens = server.protocol.parse_tokens(response.json())
        except (httpx.HTTPError, ValueError, SerapeumError):
            tokens = []
        if len(tokens) == 1:
            return server  # a ChatML model whose GGUF has exactly this template
    return attrs.evolve(server, chat_template=None)


def _require_one_kind(servers: list[ServerDescription]) -> None:
    kinds = {server.protocol.name for server in servers}
    if len(kinds) > 1:
        raise ConfigurationError(
            f"the servers speak different protocols ({', '.join(sorted(kinds))}); one "
            "LlamaCPP routes over servers of one kind serving one model"
        )
    models = {server.model_id for server in servers if server.model_id}
    if len(models) > 1:  # the same file may well have other names on other machines
        logger.warning(
            "the servers name their models differently (%s); a conversation must get the "
            "same model wherever it is routed",
            ", ".join(sorted(models)),
        )
