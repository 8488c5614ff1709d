"""Server backend for serapeum-llama-cpp: generate on llama.cpp or OpenAI-compatible servers."""

from serapeum_backend_server.errors import (
    ServerDisconnectedError,
    ServerProtocolError,
    ServerResponseError,
    ServerUnavailableError,
)
from serapeum_backend_server.options import ServerOptions, server_options

__all__ = [
    "ServerDisconnectedError",
    "ServerOptions",
    "ServerProtocolError",
    "ServerResponseError",
    "ServerUnavailableError",
    "server_options",
]
