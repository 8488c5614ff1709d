"""``serapeum-llama-cpp serve``: an OpenAI-compatible HTTP server for one ``LlamaCPP``.

``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed or
not; see docs/serve.md. Starlette and uvicorn come with the ``serve`` extra and are imported
only when a server is made, so ``import serapeum.llama_cpp`` does not need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serapeum.llama_cpp.errors import ServeDependencyError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from serapeum.llama_cpp.llm import LlamaCPP

__all__ = ["ServeDependencyError", "create_app", "default_model_id", "run_server"]

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
) -> None:
    """Serve ``llm`` with uvicorn until interrupted (Ctrl-C); blocks.

    ``model_id`` defaults to the model file's name.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing(exc) from exc
    name = model_id or default_model_id(llm)
    app = create_app(llm, model_id=name)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"serving {name} at http://{shown_host}:{port}/v1 (OpenAI API; Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run()
