"""Special files and paths: refused by ``stat`` alone (nothing blocks), each named as what it is.

Every case runs in a child process with a timeout: opening a FIFO would block this one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serapeum.core.errors import ModelFileError
from serapeum.core.model_files import require_regular_file

CONSTRUCT = """
import sys
from serapeum.core.errors import SerapeumError
from serapeum.llama_cpp import LlamaCPP
try:
    LlamaCPP(model_path=sys.argv[1], formatter="llama2")
except SerapeumError as exc:
    print(type(exc).__name__, "|", exc)
"""


def _construct(path: Path | str) -> tuple[str, str]:
    """(error class, message) of constructing LlamaCPP on ``path`` in a child, within 20 s."""
    result = subprocess.run(
        [sys.executable, "-c", CONSTRUCT, str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    name, _, message = result.stdout.strip().partition(" | ")
    return name, message


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    name, message = _construct(fifo)
    assert name == "ModelFileError"
    assert "named pipe" in message


def test_a_character_device_is_refused() -> None:
    name, message = _construct("/dev/zero")
    assert name == "ModelFileError"
    assert "character device" in message


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.gguf"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        name, message = _construct(path)
    finally:
        server.close()
    assert name == "ModelFileError"
    assert "socket" in message


def test_a_symlink_loop_is_named_as_such(tmp_path: Path) -> None:
    loop = tmp_path / "a.gguf"
    os.symlink(tmp_path / "b.gguf", loop)
    os.symlink(loop, tmp_path / "b.gguf")
    name, message = _construct(loop)
    assert name == "ModelFileError"
    assert "symbolic link loop" in message


def test_a_dangling_symlink_says_so(tmp_path: Path) -> None:
    link = tmp_path / "gone.gguf"
    os.symlink(tmp_path / "missing.gguf", link)
    name, message = _construct(link)
    assert name == "ModelFileNotFoundError"
    assert "symbolic link to a missing file" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_permission_problem(tmp_path: Path, tiny_model_path: Path) -> None:
    copy = tmp_path / "locked.gguf"
    copy.write_bytes(tiny_model_path.read_bytes())
    copy.chmod(0)
    name, message = _construct(copy)
    assert name == "ModelFileError"
    assert "permission denied" in message


def test_a_file_under_a_file_is_typed(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ModelFileError):
        require_regular_file(tmp_path / "plain" / "model.gguf")


def test_a_nul_byte_in_the_path_is_typed() -> None:
    with pytest.raises(ModelFileError, match="not a valid path"):
        require_regular_file(Path("model\0.gguf"))


def test_a_model_file_error_is_an_oserror_and_a_valueerror(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as caught:
        require_regular_file(tmp_path)
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value, ValueError)


def test_model_sha256_is_checked_for_a_local_path(tmp_path: Path, tiny_model_path: Path) -> None:
    import hashlib

    from serapeum.core.errors import ChecksumMismatchError
    from serapeum.llama_cpp import LlamaCPP

    digest = hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", model_sha256=digest.upper())
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ChecksumMismatchError) as caught:
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", model_sha256=wrong)
    assert caught.value.expected == wrong
    assert caught.value.actual == digest
    assert "was kept" in str(caught.value)
    assert tiny_model_path.is_file(), "a checksum typo never deletes the user's file"
