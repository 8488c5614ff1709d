"""``serapeum-llama-cpp serve``: an OpenAI-compatible HTTP server for one ``LlamaCPP``.

``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed or
not; see docs/serve.md. Starlette and uvicorn come with the ``serve`` extra and are imported
only when a server is made, so ``import serapeum.llama_cpp`` does not need them.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from serapeum.llama_cpp.errors import ServeAddressError, ServeDependencyError
from serapeum.llama_cpp.serve.address import bind_socket, shown_address

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from serapeum.llama_cpp.llm import LlamaCPP

__all__ = [
    "ServeAddressError",
    "ServeDependencyError",
    "bind_socket",
    "create_app",
    "default_model_id",
    "run_server",
]

_STACK = ("starlette", "uvicorn")
# Seconds Ctrl-C waits for open streams before closing their connections.
GRACEFUL_SHUTDOWN_SECONDS = 5


def _package(exc: ImportError) -> str | None:
    """The top-level package that could not be imported (``starlette`` of ``starlette.x``)."""
    return exc.name.partition(".")[0] if exc.name else None


def _missing(exc: ImportError) -> ServeDependencyError:
    name = _package(exc)
    return ServeDependencyError(
        f"the OpenAI-compatible server needs {name}, which is not installed: "
        "pip install 'serapeum-llama-cpp[serve]'",
        name=name,
    )


def create_app(llm: LlamaCPP, *, model_id: str) -> Starlette:
    """A Starlette (ASGI) app serving ``llm`` under OpenAI's API as ``model_id``."""
    try:
        from serapeum.llama_cpp.serve.app import create_app as build
    except ImportError as exc:
        if _package(exc) not in _STACK:
            raise
        raise _missing(exc) from exc
    return build(llm, model_id=model_id)


def default_model_id(llm: LlamaCPP) -> str:
    """The id a server gives its model: the model file's name (the backend's name without one)."""
    if llm.model_path:
        return Path(llm.model_path).name
    return llm.loaded_model.name


def run_server(
    llm: LlamaCPP,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    model_id: str | None = None,
    log_level: str = "warning",
    sock: socket.socket | None = None,
) -> None:
    """Serve ``llm`` with uvicorn until interrupted (Ctrl-C); blocks.

    ``model_id`` defaults to the model file's name. ``sock``: a socket from
    ``bind_socket(host, port)``, bound before the model was loaded so that a port in use is
    refused at once; without one, ``host:port`` is bound here. Either way a bind failure is a
    ``ServeAddressError`` and nothing is printed; the "serving" line comes once the server
    listens. The socket is closed when the server stops.
    """
    try:
        from serapeum.llama_cpp.serve.runner import serve_on
    except ImportError as exc:
        if _package(exc) not in _STACK:
            raise
        raise _missing(exc) from exc
    listening = sock if sock is not None else bind_socket(host, port)
    try:
        name = model_id or default_model_id(llm)
        where = shown_address(*listening.getsockname()[:2])  # port 0: the one it got
        serve_on(
            create_app(llm, model_id=name),
            listening,
            banner=f"serving {name} at http://{where}/v1 (OpenAI API; Ctrl-C to stop)",
            log_level=log_level,
            graceful_seconds=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        listening.close()
