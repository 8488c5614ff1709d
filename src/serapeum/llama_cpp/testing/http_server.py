"""A real HTTP server on 127.0.0.1 for download tests: Range support and switchable faults.

Serve bytes at a path with a ``Behaviour`` (status, Range support, a dropped connection, a
false Content-Length, 500s before success, a slow body, a redirect, validators and
``If-Range``, a file that changes after a dropped connection, a gzip-compressed body
whatever the client accepts) and read the request log afterwards.
``start_loopback_server()`` returns it running; ``stop()`` ends it. Paths are matched
without their query string (``/m.gguf?token=x`` is served what ``/m.gguf`` is).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


@dataclass
class Behaviour:
    """How the server answers one path; counters (``*_times``) are used up as it answers."""

    status: int = 200
    ranges: bool = True
    content_type: str = "application/octet-stream"
    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int = 1  # ...this many times
    claimed_length: int | None = None  # a Content-Length that is not the truth
    claim_times: int = 1_000_000
    fail_times: int = 0  # answer 500 this many times first
    delay_per_chunk: float = 0.0
    redirect_to: str | None = None
    # Validators: "auto" is a strong ETag made from the current bytes; None sends none.
    etag: str | None = "auto"
    last_modified: str | None = None
    honour_if_range: bool = True  # False: a broken server that resumes whatever If-Range says
    change_to: bytes | None = None  # after the first dropped connection, serve these bytes
    gzip: bool = False  # Content-Encoding: gzip whatever Accept-Encoding says (no ranges)


@dataclass
class Record:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int = 0
    query: str = ""
    if_range: str | None = None
    accept_encoding: str | None = None
    content_encoding: str | None = None


@dataclass
class LoopbackServer:
    files: dict[str, bytes] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    log: list[Record] = field(default_factory=list)
    port: int = 0
    _httpd: ThreadingHTTPServer | None = None

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, **behaviour: object) -> str:
        self.files[path] = body
        self.behaviours[path] = Behaviour(**behaviour)  # type: ignore[arg-type]
        return self.url(path)

    def requests_for(self, path: str) -> list[Record]:
        return [r for r in self.log if r.path == path]


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            behaviour = server.behaviours.get(path, Behaviour(status=404))
            record = Record(
                "GET",
                path,
                self.headers.get("Range"),
                behaviour.status,
                query=query,
                if_range=self.headers.get("If-Range"),
                accept_encoding=self.headers.get("Accept-Encoding"),
            )
            server.log.append(record)
            if behaviour.redirect_to:
                record.status = 302
                self.send_response(302)
                self.send_header("Location", behaviour.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if behaviour.fail_times > 0:
                behaviour.fail_times -= 1
                record.status = 500
                self._send_body(500, b"try again later", "text/plain")
                return
            if path not in server.files or behaviour.status != 200:
                self._send_body(behaviour.status, b"<html>nope</html>", "text/html")
                return
            body = server.files[path]
            etag = _etag(behaviour, body)
            if behaviour.gzip:
                body = gzip.compress(body, mtime=0)
                record.content_encoding = "gzip"
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", record.range or "")
            if_range = record.if_range
            honoured = (
                if_range is None
                or not behaviour.honour_if_range
                or (if_range in (etag, behaviour.last_modified) and not if_range.startswith("W/"))
            )
            if match and behaviour.ranges and not behaviour.gzip and honoured:
                start = int(match.group(1))
                if start >= len(body):
                    record.status = 416
                    self._send_body(416, b"", "text/plain")
                    return
                record.status = 206
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                record.status = 200
                self.send_response(200)
            length = len(body) - start
            if behaviour.claimed_length is not None and behaviour.claim_times > 0:
                behaviour.claim_times -= 1
                length = behaviour.claimed_length - start
            self.send_header("Content-Type", behaviour.content_type)
            self.send_header("Content-Length", str(length))
            if behaviour.gzip:
                self.send_header("Content-Encoding", "gzip")
            if etag is not None:
                self.send_header("ETag", etag)
            if behaviour.last_modified is not None:
                self.send_header("Last-Modified", behaviour.last_modified)
            if behaviour.ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            limit = len(body)
            if behaviour.drop_after is not None and behaviour.drop_times > 0:
                behaviour.drop_times -= 1
                limit = min(limit, start + behaviour.drop_after)
                if behaviour.change_to is not None:  # the file is replaced while we send
                    server.files[path], behaviour.change_to = behaviour.change_to, None
            position = start
            try:
                while position < limit:
                    piece = body[position : min(limit, position + CHUNK)]
                    self.wfile.write(piece)
                    record.body_bytes += len(piece)
                    position += len(piece)
                    if behaviour.delay_per_chunk:
                        time.sleep(behaviour.delay_per_chunk)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if position < start + length:  # a dropped or short body: cut the connection
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send_body(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _etag(behaviour: Behaviour, body: bytes) -> str | None:
    if behaviour.etag == "auto":
        return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return behaviour.etag


def start_loopback_server() -> LoopbackServer:
    state = LoopbackServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    state._httpd = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state
