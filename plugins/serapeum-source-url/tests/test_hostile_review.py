"""Hostile servers and a hostile cache, second look: each test failed before its fix.

* A chunked body that goes on past its ``Content-Length`` was written forever (7 GB in
  20 s on the development machine); a gzip bomb inflated in full before any check.
* A server dripping a byte at a time, in its body or its headers, held a download as
  long as it liked: the read timeout bounds one wait, not the transfer.
* A body of the wrong kind was downloaded whole before its first bytes were looked at;
  a size larger than the free disk was accepted.
* A symbolic link at ``<target>.part`` or ``.part.meta`` was written through (over a
  file outside the cache); a FIFO there blocked forever.
* A redirect loop was retried; a directory at the final path was returned as the model.

The raw servers here speak HTTP over a plain socket: the faults are real bytes on the
wire, not mocks.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serapeum.llama_cpp.testing.http_server import Behaviour
from serapeum_source_url import (
    CacheDirectoryError,
    DownloadError,
    DownloadSettings,
    NotAModelError,
    cached_path,
    download_model,
)

ONCE = DownloadSettings(retries=0, backoff_seconds=0.01, read_timeout=30)
Handler = Callable[[socket.socket, bytes], None]


class RawServer:
    """One handler for every connection, on 127.0.0.1; counts the body bytes it sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent = 0
        self.requests = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/m.gguf") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                data = connection.recv(65536)
                if not data:
                    return
                request += data
            self.requests += 1
            with contextlib.suppress(OSError):  # the client hung up
                self.handler(connection, request)

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _run(call: Callable[[], object], timeout: float = 120.0) -> BaseException | None:
    """Run ``call`` in a thread: its exception, None if it returned; fails on a hang."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, "the download hung"
    return outcome[0]


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(target.name + "*") if p.suffix != ".lock")


# -- bodies that do not end, or inflate -----------------------------------------------------------
def test_a_chunked_body_past_its_content_length_is_cut_off(
    raw_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    def endless(connection: socket.socket, _: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(model_bytes)
        connection.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = model_bytes[:65536]
        for _ in range(4 * len(model_bytes) // len(piece)):  # 4 files' worth, then stop
            server.send(connection, b"%x\r\n" % len(piece) + piece + b"\r\n")
        connection.sendall(b"0\r\n\r\n")

    server = raw_server(endless)
    target = cached_path(server.url())
    error = _run(lambda: download_model(server.url(), target, settings=ONCE, progress=False))
    assert isinstance(error, DownloadError)
    assert "more than the" in str(error)
    assert _leftovers(target) == []


def test_a_gzip_bomb_is_cut_off(http_server: Any, cache_root: Path) -> None:
    bomb = b"GGUF" + bytes(60 << 20)  # 60 MB of zeros: about 60 KB on the wire
    url = http_server.serve("/bomb.gguf", bomb, gzip=True)
    target = cached_path(url)
    error = _run(lambda: download_model(url, target, settings=ONCE, progress=False))
    assert isinstance(error, DownloadError) and "inflated" in str(error)
    assert _leftovers(target) == []


# -- servers that drip -------------------------------------------------------------------------
SLOW = DownloadSettings(
    retries=0,
    connect_timeout=1,
    read_timeout=1,
    min_bytes_per_second=1000,
    slow_seconds=0.5,
    backoff_seconds=0,
)


def test_a_dripping_body_is_ended_by_the_watchdog(
    raw_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    def drip(connection: socket.socket, _: bytes) -> None:
        head = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "d"\r\n\r\n' % len(model_bytes)
        connection.sendall(head)
        for byte in model_bytes[:100]:  # 20 bytes a second for 5 s, then hang up
            server.send(connection, bytes([byte]))
            time.sleep(0.05)

    server = raw_server(drip)
    target = cached_path(server.url())
    error = _run(lambda: download_model(server.url(), target, settings=SLOW, progress=False))
    assert isinstance(error, DownloadError)
    assert "bytes a second" in str(error)


def test_dripping_headers_are_ended_by_the_watchdog(raw_server: Any, cache_root: Path) -> None:
    def drip(connection: socket.socket, _: bytes) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
            connection.sendall(bytes([byte]))
            time.sleep(0.05)

    server = raw_server(drip)
    target = cached_path(server.url())
    error = _run(lambda: download_model(server.url(), target, settings=SLOW, progress=False))
    assert isinstance(error, DownloadError)
    assert "did not complete its response headers" in str(error)


# -- bodies that are refused at once ---------------------------------------------------------------
def test_a_body_that_is_not_gguf_is_refused_at_its_first_bytes(
    http_server: Any, cache_root: Path
) -> None:
    size = 40 << 20
    url = http_server.serve("/zip.gguf", b"PK\x03\x04" + bytes(size - 4))
    target = cached_path(url)
    error = _run(lambda: download_model(url, target, settings=ONCE, progress=False))
    assert isinstance(error, NotAModelError) and "b'PK\\x03\\x04'" in str(error)
    [record] = http_server.requests_for("/zip.gguf")
    assert record.body_bytes < size
    assert _leftovers(target) == []


def test_a_file_larger_than_the_free_disk_is_refused_before_writing(
    raw_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    def huge(connection: socket.socket, _: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"
        server.send(connection, head + model_bytes)

    server = raw_server(huge)
    target = cached_path(server.url())
    error = _run(lambda: download_model(server.url(), target, settings=ONCE, progress=False))
    assert isinstance(error, CacheDirectoryError) and "free" in str(error)
    assert _leftovers(target) == []


def test_a_redirect_loop_is_not_retried(http_server: Any, cache_root: Path) -> None:
    http_server.behaviours["/loop"] = Behaviour(redirect_to="/loop")
    url = http_server.url("/loop")
    settings = DownloadSettings(retries=3, backoff_seconds=0.01)
    error = _run(lambda: download_model(url, cached_path(url), settings=settings))
    assert isinstance(error, DownloadError) and "redirect" in str(error).lower()
    assert len(http_server.requests_for("/loop")) <= 31  # one attempt: 30 redirects


# -- what is placed in the cache ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["m.gguf.part", "m.gguf.part.meta"])
def test_a_link_in_the_cache_is_never_written_through(
    http_server: Any, model_bytes: bytes, tmp_path: Path, name: str
) -> None:
    url = http_server.serve("/m.gguf", model_bytes)
    target = tmp_path / "cache" / "m.gguf"
    target.parent.mkdir()
    victim = tmp_path / "victim.gguf"
    victim.write_bytes(b"precious" * 100)
    (target.parent / name).symlink_to(victim)
    assert _run(lambda: download_model(url, target, settings=ONCE, progress=False)) is None
    assert victim.read_bytes() == b"precious" * 100
    assert not target.is_symlink() and target.read_bytes() == model_bytes


@pytest.mark.parametrize("name", ["m.gguf.part", "m.gguf.part.meta"])
def test_a_fifo_in_the_cache_does_not_block_the_download(
    http_server: Any, model_bytes: bytes, tmp_path: Path, name: str
) -> None:
    url = http_server.serve("/m.gguf", model_bytes)
    target = tmp_path / "cache" / "m.gguf"
    target.parent.mkdir()
    if name.endswith(".meta"):
        target.with_name("m.gguf.part").write_bytes(model_bytes[:1000])
    os.mkfifo(target.parent / name)
    assert _run(lambda: download_model(url, target, settings=ONCE, progress=False)) is None
    assert target.read_bytes() == model_bytes


def test_a_directory_at_the_final_path_is_reported(
    http_server: Any, model_bytes: bytes, tmp_path: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes)
    target = tmp_path / "m.gguf"
    target.mkdir()
    with pytest.raises(CacheDirectoryError, match="is a directory"):
        download_model(url, target, settings=ONCE, progress=False)
    assert target.is_dir()


def test_gzip_of_a_real_model_still_downloads(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    """The inflation bound leaves a compressing server of a real model alone."""
    assert len(gzip.compress(model_bytes)) * 100 > len(model_bytes)
    url = http_server.serve("/z.gguf", model_bytes, gzip=True)
    path = download_model(url, cached_path(url), settings=ONCE, progress=False)
    assert path.read_bytes() == model_bytes


def test_an_unparsable_url_is_a_configuration_error() -> None:
    from serapeum.core.errors import ConfigurationError
    from serapeum_source_url.cache_paths import safe_file_name

    with pytest.raises(ConfigurationError, match="not a valid URL"):
        safe_file_name("http://[::1")
