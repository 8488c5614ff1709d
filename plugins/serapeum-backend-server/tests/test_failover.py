"""Servers that die: before the first token the request moves on; after it, a typed error.

Each test starts its own servers (it kills them), of the module's kind (see conftest).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serapeum.core.llms import FinishReason
from serapeum.llama_cpp import LlamaCPP
from serapeum_backend_server import ServerDisconnectedError, ServerUnavailableError
from serapeum_backend_server.testing import free_port, start_llama_cpp_python_server

from .conftest import ServerFactory


def _llm(urls: list[str], **settings: object) -> LlamaCPP:
    return LlamaCPP(
        server_urls=urls,
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=48,
        context_window=1024,
        **settings,  # type: ignore[arg-type]
    )


def test_killing_one_of_two_servers_loses_no_request_that_had_not_started(
    start_server: ServerFactory, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serapeum.backend.server")
    doomed, survivor = start_server(tiny_model_path), start_server(tiny_model_path)
    llm = _llm([doomed.url, survivor.url])
    expected = llm.complete("Question 0").text
    started = threading.Event()
    outcomes: list[object] = []

    def ask(i: int) -> object:
        stream = llm.complete(f"Question {i % 3}", stream=True)
        text = ""
        try:
            for chunk in stream:
                started.set()
                text = chunk.text
            return text
        except ServerDisconnectedError as exc:
            return exc

    # Far more requests at once than the servers have slots: some wait on the doomed one.
    with ThreadPoolExecutor(max_workers=16) as workers:
        futures = [workers.submit(ask, i) for i in range(48)]
        started.wait(timeout=60)
        doomed.kill()
        outcomes = [f.result(timeout=300) for f in futures]

    disconnected = [o for o in outcomes if isinstance(o, ServerDisconnectedError)]
    answered = [o for o in outcomes if isinstance(o, str)]
    assert len(answered) + len(disconnected) == 48
    # Only a request already streaming from the killed server may fail, and it says what it
    # had (never silently re-generated elsewhere).
    for error in disconnected:
        assert error.text and error.server == doomed.url
    assert len(disconnected) <= 2, disconnected
    assert all(a for a in answered)
    assert llm.complete("Question 0").text == expected  # the survivor serves what is left
    assert 0 in llm.loaded_model.pool.problems()  # type: ignore[attr-defined]
    # The kill caught requests waiting on the doomed server (to tokenize or to generate),
    # and they moved on.
    assert "another server" in caplog.text


def test_a_server_down_at_start_joins_as_down(
    start_server: ServerFactory, tiny_model_path: Path
) -> None:
    alive = start_server(tiny_model_path)
    dead = f"http://127.0.0.1:{free_port()}"
    llm = _llm([dead, alive.url])
    for _ in range(3):
        assert llm.complete("Hello").finish_reason is FinishReason.LENGTH
    assert llm.loaded_model.pool.problems().keys() == {0}  # type: ignore[attr-defined]


def test_no_server_at_all_is_a_typed_error(tiny_model_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1"):
        _llm([dead])


def test_every_server_dying_is_a_typed_error(
    start_server: ServerFactory, tiny_model_path: Path
) -> None:
    only = start_server(tiny_model_path)
    llm = _llm([only.url])
    assert llm.complete("Hello").text
    only.kill()
    with pytest.raises(ServerUnavailableError):
        llm.complete("Hello")


@pytest.mark.e2e
def test_a_server_dying_mid_stream_keeps_the_text_so_far(
    start_server: ServerFactory, gemma_model_path: Path
) -> None:
    server = start_server(gemma_model_path, n_ctx=1024)
    llm = LlamaCPP(server_urls=[server.url], formatter="gemma", temperature=0.0, max_new_tokens=400)
    received = ""
    with pytest.raises(ServerDisconnectedError) as caught:
        for chunk in llm.complete("1, 2, 3, 4, 5,", formatted=True, stream=True):
            received += chunk.delta
            if received and server.alive:
                server.kill()
    assert caught.value.text == received and received


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made by the openssl command line (a real TLS handshake)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_verifies_the_servers_certificate(tiny_model_path: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with start_llama_cpp_python_server(tiny_model_path, tls=(cert, key)) as server:
        assert server.url.startswith("https://")
        trusting = _llm([server.url], model_kwargs={"verify": str(cert)})
        assert trusting.complete("Hello", max_new_tokens=4).text
        with pytest.raises(ServerUnavailableError, match=r"(?i)certificate"):
            _llm([server.url])  # the system's CAs do not know this certificate
