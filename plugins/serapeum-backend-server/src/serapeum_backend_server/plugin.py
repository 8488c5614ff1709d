"""Registers the ``server`` backend: generation on llama.cpp or OpenAI-compatible servers."""

from __future__ import annotations

from serapeum.core.plugins import BackendSpec, hookimpl
from serapeum_backend_server.connect import check_server_kwargs, connect

SERVER_BACKEND = BackendSpec(
    name="server",
    load=connect,
    description="llama.cpp llama-server or OpenAI-compatible servers over HTTP",
    needs_model_file=False,
    check_load_options=check_server_kwargs,
)


@hookimpl
def serapeum_register_backends() -> list[BackendSpec]:
    return [SERVER_BACKEND]


__all__ = ["SERVER_BACKEND", "serapeum_register_backends"]
