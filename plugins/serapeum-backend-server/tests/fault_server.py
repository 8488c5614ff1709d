"""A real HTTP server on 127.0.0.1 that speaks llama-server's protocol and fails on cue.

Real servers cannot be made to stall before their first byte, answer 502 once, or send an
error event after a 200 at a chosen moment; this one can. Everything else (sockets, HTTP,
SSE, the client) is real.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Scenario = Callable[["Handler", dict[str, Any]], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: FaultServerHTTP

    def log_message(self, *args: object) -> None:  # quiet tests
        pass

    def send_json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/props":
            self.send_json(
                {
                    "default_generation_settings": {"n_ctx": 512},
                    "total_slots": 1,
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "model_path": "fault.gguf",
                }
            )
        elif self.path == "/health":
            self.send_json({"status": "ok"})
        else:
            self.send_json({"error": {"code": 404, "message": "no"}}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/tokenize":
            tokens = [100 + ord(c) % 50 for c in body.get("content", "")]
            self.send_json({"tokens": ([1] if body.get("add_special") else []) + tokens})
        elif self.path == "/completion":
            self.server.owner.completions += 1
            self.server.owner.received.set()
            self.server.owner.scenario(self, body)
        else:
            self.send_json({"error": {"code": 404, "message": "no"}}, 404)

    # -- pieces of a streamed answer --------------------------------------------------------
    def stream_headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()

    def event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def token(self, text: str) -> None:
        self.event({"content": text, "stop": False})

    def final(self) -> None:
        self.event(
            {
                "content": "",
                "stop": True,
                "stop_type": "limit",
                "tokens_evaluated": 3,
                "tokens_predicted": 2,
                "timings": {"prompt_n": 3, "prompt_ms": 1.0, "predicted_n": 2, "predicted_ms": 2.0},
            }
        )

    def answer(self, *texts: str) -> None:
        self.stream_headers()
        for text in texts:
            self.token(text)
        self.final()

    def die(self) -> None:
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class FaultServerHTTP(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultServer


class FaultServer:
    """``scenario(handler, body)`` answers each ``POST /completion``; ``release`` ends stalls."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.completions = 0
        self.received = threading.Event()
        self.release = threading.Event()
        self.httpd = FaultServerHTTP(("127.0.0.1", 0), Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
