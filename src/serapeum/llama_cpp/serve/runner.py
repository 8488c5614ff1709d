"""Running the app with uvicorn on a socket already bound, announcing it once it listens."""

from __future__ import annotations

import socket
import sys

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_on"]


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing one line to stderr once it has really started.

    Printed from ``startup``, after the listeners exist, so a line never promises a server
    that then fails to start.
    """

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.banner, file=sys.stderr, flush=True)


def serve_on(
    app: ASGIApp,
    sock: socket.socket,
    *,
    banner: str,
    log_level: str,
    graceful_seconds: int,
) -> None:
    """Serve ``app`` on the listening ``sock`` until interrupted (Ctrl-C); blocks."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_seconds)
    _AnnouncingServer(config, banner).run(sockets=[sock])
