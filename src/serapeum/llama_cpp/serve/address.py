"""The server's listening socket, bound before anything slow happens.

Binding first turns a port in use into one typed error (``ServeAddressError``) before the
model loads or the "serving" line is printed, instead of uvicorn's raw log line and exit 3.
The socket is made as uvicorn's own ``Config.bind_socket`` makes it, then handed to uvicorn.
"""

from __future__ import annotations

import errno
import socket

from serapeum.llama_cpp.errors import ServeAddressError

__all__ = ["bind_socket", "shown_address"]

# uvicorn's default; connections made before the server starts wait in it.
BACKLOG = 2048

# What to do about the commonest failures; any other shows the system's words alone.
_ADVICE = {
    errno.EADDRINUSE: "address already in use; choose another port (--port) or stop the "
    "program listening there",
    errno.EADDRNOTAVAIL: "no such address on this machine; choose another host (--host), "
    "such as 127.0.0.1",
    errno.EACCES: "permission denied; ports below 1024 need privileges, choose another port "
    "(--port)",
}


def shown_address(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror}); choose another host (--host)"
    if exc.errno in _ADVICE:
        return _ADVICE[exc.errno]
    return (exc.strerror or str(exc)).lower()


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``, for ``run_server(sock=...)``.

    Connections made before the server starts wait (in the backlog) until it does.

    Raises ``ServeAddressError`` (an ``OSError``) when the address cannot be had: the port is
    in use, the host is not this machine's, or the port needs privileges.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restarted server may take over its port from old TIME_WAIT
        # connections (on Linux this never lets two servers share a listening port).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # the port is ours now, even against another SO_REUSEADDR
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ServeAddressError(
            f"cannot listen on {shown_address(host, port)}: {_reason(exc)}",
            host=host,
            port=port,
            errno=exc.errno,
        ) from exc
    return sock
