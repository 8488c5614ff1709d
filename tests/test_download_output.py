"""What ``download`` writes to stderr: no progress-bar frames in a file, one clear line per
failure, against the real loopback HTTP server and a real refused port."""

from __future__ import annotations

import fcntl
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any


def _download(url: str, cache: Path, stderr_file: Path, *args: str) -> tuple[int, str, str]:
    """Run ``download`` with stderr going to a real file, as in ``2> log``."""
    with stderr_file.open("w") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "serapeum.llama_cpp", "download", url, *args],
            env={**os.environ, "SERAPEUM_CACHE_DIR": str(cache)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=300,
            check=False,
        )
    return result.returncode, result.stdout, stderr_file.read_text()


def test_progress_to_a_file_is_one_final_line(
    http_server: Any, model_bytes: bytes, tmp_path: Path
) -> None:
    # Slow chunks: a progress bar would have drawn many frames meanwhile.
    url = http_server.serve("/tiny.gguf", model_bytes, delay_per_chunk=0.05)
    status, stdout, stderr = _download(url, tmp_path / "cache", tmp_path / "stderr.log")
    assert status == 0, stderr
    assert Path(stdout.strip()).read_bytes() == model_bytes
    assert "\r" not in stderr and "\x1b" not in stderr  # no bar frames, no cursor moves
    [line] = stderr.splitlines()
    assert line.startswith("downloaded tiny.gguf: ") and " in " in line


def test_quiet_writes_nothing_to_the_file(
    http_server: Any, model_bytes: bytes, tmp_path: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    status, _, stderr = _download(url, tmp_path / "cache", tmp_path / "stderr.log", "--quiet")
    assert status == 0 and stderr == ""


def test_progress_on_a_terminal_is_a_bar(
    http_server: Any, model_bytes: bytes, tmp_path: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes, delay_per_chunk=0.05)
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, in which tqdm draws an empty bar: size it.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "serapeum.llama_cpp", "download", url],
            env={**os.environ, "SERAPEUM_CACHE_DIR": str(tmp_path / "cache")},
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            seen += data
        assert process.wait(timeout=300) == 0
    finally:
        os.close(leader)
    assert b"\r" in seen and b"tiny.gguf" in seen  # tqdm redraws its bar in place
    assert b"downloaded tiny.gguf" not in seen


def _refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_refused_port()}/model.gguf"
    status, stdout, stderr = _download(url, tmp_path / "cache", tmp_path / "stderr.log")
    assert status == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert url in line and "connection refused" in line and "after 2 attempts" in line
    assert "check that the server is running" in line.lower()
    assert line.count("refused") == 1  # the retries are collapsed, not repeated
    assert "Max retries" not in line and "NewConnectionError" not in line
    assert len(line) < 300
