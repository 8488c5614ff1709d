"""A watchdog that ends a transfer a server keeps alive without really sending it.

The read timeout bounds one wait for a byte, not a transfer: a server that drips one
byte a second (in its headers or its body) never trips it and could hold a download
forever. The watchdog ends a response whose headers are not complete within
``header_seconds`` (the connect and read timeouts together: as long as a quiet server
was allowed), then, like curl's ``--speed-limit``/``--speed-time``, a body whose average
speed stays under ``min_bytes_per_second`` for ``slow_seconds``, and any attempt that
has run longer than ``max_seconds`` when that is set. It ends it by shutting the socket
down from its own thread, which wakes the blocked read at once; the reader then sees a
broken connection and asks ``Watchdog.fired`` why.

The socket is found through the connection classes of ``watched_session()`` (from the
request on: headers and body), else, for a caller's own session, from the response
(the body only).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Watchdog", "watched_session"]

_current = threading.local()


class Watchdog:
    """Watches one attempt: ``with Watchdog(...) as dog:`` around the request and reads."""

    def __init__(
        self,
        min_bytes_per_second: float,
        slow_seconds: float,
        max_seconds: float | None,
        header_seconds: float,
    ) -> None:
        self._min_bytes = min_bytes_per_second * slow_seconds
        self._slow_seconds = slow_seconds
        self._max_seconds = max_seconds
        self._header_seconds = header_seconds
        self._body_since: float | None = None  # when the headers were complete
        self._socket: socket.socket | None = None
        self._received = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None  # why the transfer was ended, if it was

    def __enter__(self) -> Watchdog:
        _current.watchdog = self
        if self._slow_seconds > 0 or self._max_seconds is not None:  # else no watching
            self._thread = threading.Thread(target=self._watch, name="download-watchdog")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        _current.watchdog = None
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def watch_socket(self, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socket = sock

    def watch_response(self, response: requests.Response) -> None:
        """The headers are complete: from now on the body's speed is watched. For a
        caller's session, the socket is found through the response (best effort)."""
        connection = getattr(response.raw, "_connection", None)
        self.watch_socket(getattr(connection, "sock", None))
        with self._lock:
            self._body_since = time.monotonic()

    def received(self, count: int) -> None:
        with self._lock:
            self._received += count

    def _watch(self) -> None:
        start = time.monotonic()
        window_start: float | None = None
        window_bytes = 0
        tick = min(1.0, max(self._slow_seconds / 4, 0.05)) if self._slow_seconds > 0 else 1.0
        while not self._done.wait(tick):
            now = time.monotonic()
            with self._lock:
                received, body_since = self._received, self._body_since
            if self._max_seconds is not None and now - start >= self._max_seconds:
                self._fire(f"the transfer took longer than max_seconds={self._max_seconds:g}")
                return
            if self._slow_seconds <= 0:
                continue
            if body_since is None:
                if now - start >= self._header_seconds:
                    self._fire(
                        f"the server did not complete its response headers within "
                        f"{self._header_seconds:g} s (a stalled or deliberately slow server)"
                    )
                    return
                continue
            if window_start is None:
                window_start, window_bytes = body_since, 0
            if now - window_start >= self._slow_seconds:
                if received - window_bytes < self._min_bytes:
                    self._fire(
                        f"the server sent {received - window_bytes} bytes in "
                        f"{now - window_start:.0f} s, less than the "
                        f"{self._min_bytes / self._slow_seconds:,.0f} bytes a second "
                        "required (a stalled or deliberately slow server)"
                    )
                    return
                window_start, window_bytes = now, received

    def _fire(self, why: str) -> None:
        self.fired = why
        with self._lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: the read ends anyway
                sock.shutdown(socket.SHUT_RDWR)


def _watch_current(sock: Any) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.watch_socket(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:  # type: ignore[override]
        _watch_current(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:  # type: ignore[override]
        _watch_current(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections tell the current ``Watchdog`` their socket."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def watched_session() -> requests.Session:
    """A ``requests.Session`` whose sockets a ``Watchdog`` can end, headers included."""
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
