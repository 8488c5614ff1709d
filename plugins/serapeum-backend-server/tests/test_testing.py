"""The launcher of real inference servers: they start, answer, die when killed, and a failed
start says why (with the server's own log).

Real processes on the tiny model; llama.cpp's ``llama-server`` only where
``SERAPEUM_LLAMA_SERVER`` names a built binary.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from serapeum_backend_server.testing import (
    BUILD_SCRIPT,
    LLAMA_SERVER_ENV,
    llama_server_binary,
    start_llama_cpp_python_server,
    start_llama_server,
)

needs_llama_server = pytest.mark.skipif(
    llama_server_binary() is None,
    reason=f"no llama-server: build it with {BUILD_SCRIPT} and set {LLAMA_SERVER_ENV}",
)


def test_llama_cpp_python_server_starts_answers_and_dies(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    server = start_llama_cpp_python_server(tiny_model_path, api_key="test-key", log_dir=tmp_path)
    try:
        assert server.kind == "llama-cpp-python"
        assert server.url == f"http://127.0.0.1:{server.port}"
        auth = {"Authorization": "Bearer test-key"}
        models = httpx.get(f"{server.url}/v1/models", headers=auth, timeout=10)
        assert models.status_code == 200
        assert models.json()["data"][0]["id"]
        # The key reached the server: without it the server refuses.
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
        assert server.alive
        server.kill()
        assert not server.alive
        assert server.process.returncode is not None
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v1/models", headers=auth, timeout=2)
    finally:
        server.stop()


def test_startup_failure_names_the_log(tmp_path: Path) -> None:
    not_gguf = tmp_path / "not-a-model.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file\n" * 64)
    with pytest.raises(RuntimeError, match=r"did not start: it exited") as caught:
        start_llama_cpp_python_server(not_gguf, startup_timeout=60, log_dir=tmp_path)
    message = str(caught.value)
    log = Path(message.split("Log: ", 1)[1].split("\n", 1)[0])
    assert log.is_file()
    assert log.is_relative_to(tmp_path)
    assert log.stat().st_size > 0


def test_startup_timeout_is_an_error(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"not ready after"):
        start_llama_cpp_python_server(tiny_model_path, startup_timeout=0.01, log_dir=tmp_path)


def test_llama_server_binary_needs_an_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    assert llama_server_binary() is None
    plain = tmp_path / "llama-server"
    plain.write_text("#!/bin/sh\n")
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(plain))
    assert llama_server_binary() is None
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert llama_server_binary() == str(plain)
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path))  # a directory
    assert llama_server_binary() is None


@needs_llama_server
def test_llama_server_starts_answers_and_dies(tiny_model_path: Path, tmp_path: Path) -> None:
    binary = llama_server_binary()
    assert binary is not None
    with start_llama_server(
        binary, tiny_model_path, slots=2, api_key="test-key", log_dir=tmp_path
    ) as server:
        assert server.kind == "llama-server"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        auth = {"Authorization": "Bearer test-key"}
        props = httpx.get(f"{server.url}/props", headers=auth, timeout=10)
        assert props.status_code == 200
        assert props.json()["total_slots"] == 2
        refused = httpx.post(f"{server.url}/completion", json={"prompt": "a"}, timeout=10)
        assert refused.status_code == 401
        server.kill()
        assert not server.alive
    assert not server.alive


@needs_llama_server
def test_llama_server_startup_failure_names_the_log(tmp_path: Path) -> None:
    binary = llama_server_binary()
    assert binary is not None
    not_gguf = tmp_path / "not-a-model.gguf"
    not_gguf.write_bytes(os.urandom(4096))
    with pytest.raises(RuntimeError, match=r"llama-server server did not start.*Log: ") as caught:
        start_llama_server(binary, not_gguf, startup_timeout=60, log_dir=tmp_path)
    assert "--- last lines ---" in str(caught.value)
