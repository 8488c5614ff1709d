"""The server backend's load options, checked before any connection is made.

``server_options(mapping)`` turns what a caller passed (``model_kwargs`` of
``LlamaCPP(backend="server", ...)``) into a frozen ``ServerOptions``, so a typo or a
malformed URL fails at once with a message that says what is accepted, not later as an
obscure connection error. The API key never appears in a repr or a message.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.redact import redact_url
from serapeum.core.shown import shown

__all__ = [
    "PROTOCOLS",
    "ROUTINGS",
    "ProtocolName",
    "RoutingName",
    "ServerOptions",
    "server_options",
]

ProtocolName = Literal["auto", "llama-server", "openai"]
RoutingName = Literal["affinity", "least-loaded", "round-robin"]
PROTOCOLS: tuple[ProtocolName, ...] = ("auto", "llama-server", "openai")
ROUTINGS: tuple[RoutingName, ...] = ("affinity", "least-loaded", "round-robin")


def _redacted_urls(urls: tuple[str, ...]) -> str:
    return repr(tuple(redact_url(url) for url in urls))


@frozen
class ServerOptions:
    """Where the servers are and how to talk to them.

    ``urls`` are base URLs without a trailing slash (``http://host:8080`` or
    ``https://host/prefix``); ``n_ctx`` is the caller's ``context_window`` (the server's
    own per-request context, when it reports one, is the other bound); ``model`` is the
    OpenAI ``model`` field (by default the one model the server lists); ``verify`` is
    httpx's: True, False or the path of a CA bundle.
    """

    urls: tuple[str, ...] = field(repr=_redacted_urls)
    api_key: str | None = field(default=None, repr=False)
    n_ctx: int | None = None
    protocol: ProtocolName = "auto"
    model: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    verify: bool | str = True
    routing: RoutingName = "affinity"
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


_KEYS = (
    "urls",
    "api_key",
    "n_ctx",
    "protocol",
    "model",
    "connect_timeout",
    "read_timeout",
    "verify",
    "routing",
    "backoff_initial",
    "backoff_max",
)
_ALIASES = {"url": "urls", "context_window": "n_ctx"}


def server_options(options: Mapping[str, Any]) -> ServerOptions:
    """Checked ``ServerOptions`` from a mapping; raises ``ConfigurationError`` naming the key.

    ``urls`` may be one URL (a str) or a sequence of them; ``url`` and ``context_window``
    are accepted as other names of ``urls`` and ``n_ctx``. Unknown keys are refused with
    the closest known name.
    """
    values = _canonical_keys(options)
    if "urls" not in values or values["urls"] is None:
        raise ConfigurationError(
            "the server backend needs urls=: the base URL of each server, e.g. "
            "urls=['http://127.0.0.1:8080'] (a llama.cpp llama-server or an "
            "OpenAI-compatible server)"
        )
    return ServerOptions(
        urls=_urls(values["urls"]),
        api_key=_api_key(values.get("api_key")),
        n_ctx=_n_ctx(values.get("n_ctx")),
        protocol=cast(ProtocolName, _choice("protocol", values.get("protocol", "auto"), PROTOCOLS)),
        model=_model(values.get("model")),
        connect_timeout=_positive("connect_timeout", values.get("connect_timeout", 5.0)),
        read_timeout=_positive("read_timeout", values.get("read_timeout", 600.0)),
        verify=_verify(values.get("verify", True)),
        routing=cast(RoutingName, _choice("routing", values.get("routing", "affinity"), ROUTINGS)),
        **_backoff(values.get("backoff_initial", 0.5), values.get("backoff_max", 30.0)),
    )


def _canonical_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"server options must be a mapping; got {shown(options)}")
    values: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"server option names must be str; got {shown(key)}")
        name = _ALIASES.get(key, key)
        if name not in _KEYS:
            close = difflib.get_close_matches(key, [*_KEYS, *_ALIASES], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"unknown server option {key!r}{hint}; the server backend accepts: "
                f"{', '.join(_KEYS)}"
            )
        if name in values:
            raise ConfigurationError(f"give {name!r} once (it was also given as {key!r})")
        values[name] = value
    return values


def _urls(value: Any) -> tuple[str, ...]:
    items: Sequence[Any]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = list(value)
    else:
        raise ConfigurationError(f"urls must be a URL (str) or a list of URLs; got {shown(value)}")
    if not items:
        raise ConfigurationError("urls is empty: give at least one server URL")
    urls: list[str] = []
    for item in items:
        url = _url(item)
        if url in urls:
            raise ConfigurationError(f"urls lists {redact_url(url)} twice")
        urls.append(url)
    return tuple(urls)


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"each url must be a str; got {shown(value)}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ConfigurationError(f"{redact_url(text)!r} is not a valid URL: {exc}") from None
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{redact_url(text)!r} is not an http(s) URL with a host; give the server's base "
            "URL, e.g. 'http://127.0.0.1:8080'"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{redact_url(text)!r} carries credentials (user:password@); give the key as "
            "api_key= (sent as a bearer token, never logged)"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"{redact_url(text)!r} has a query or fragment; give the server's base URL "
            "(put an API key in api_key=)"
        )
    return text.rstrip("/")


def _api_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("api_key must be a non-empty str or None")
    if any(ch in value for ch in "\r\n\0"):
        raise ConfigurationError("api_key must not contain line breaks or NUL characters")
    return value


def _n_ctx(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"n_ctx (the context window) must be a positive int or None; got {shown(value)}"
        )
    return value


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed or not isinstance(value, str):
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{name} must be one of {', '.join(map(repr, allowed))}; got {shown(value)}{hint}"
        )
    return value


def _model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"model must be a non-empty str or None; got {shown(value)}")
    return value


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds > 0; got {shown(value)}"
        )
    return float(value)


def _verify(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        if not os.path.exists(value):
            raise ConfigurationError(
                f"verify={value!r}: no such CA bundle file (give True, False or the path of "
                "a PEM file or directory of CA certificates)"
            )
        return value
    raise ConfigurationError(
        f"verify must be True, False or the path of a CA bundle; got {shown(value)}"
    )


def _backoff(initial: Any, most: Any) -> dict[str, float]:
    first = _positive("backoff_initial", initial)
    longest = _positive("backoff_max", most)
    if longest < first:
        raise ConfigurationError(
            f"backoff_max ({longest:g} s) must be at least backoff_initial ({first:g} s)"
        )
    return {"backoff_initial": first, "backoff_max": longest}
