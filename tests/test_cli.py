"""The ``serapeum-llama-cpp download`` command, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SERAPEUM_CACHE_DIR": str(cache)},
        timeout=300,
    )


def test_download_prints_the_cached_path_and_reuses_it(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/models/tiny.gguf", model_bytes)
    first = _run("download", "--quiet", url, cache=cache_root)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.is_relative_to(cache_root) and path.read_bytes() == model_bytes
    second = _run("download", url, cache=cache_root)
    assert second.stdout.strip() == str(path)
    assert len(http_server.requests_for("/models/tiny.gguf")) == 1


def test_download_of_a_local_file_prints_its_path(tiny_model_path: Path, cache_root: Path) -> None:
    result = _run("download", str(tiny_model_path), cache=cache_root)
    assert result.returncode == 0 and result.stdout.strip() == str(tiny_model_path.resolve())


def test_errors_are_one_line_without_traceback(http_server: Any, cache_root: Path) -> None:
    http_server.serve("/missing.gguf", b"", status=404)
    not_found = _run("download", http_server.url("/missing.gguf"), cache=cache_root)
    assert not_found.returncode == 1
    assert "HTTP 404" in not_found.stderr and "Traceback" not in not_found.stderr
    bad_sha = _run("download", "--sha256", "xyz", http_server.url("/m.gguf"), cache=cache_root)
    assert bad_sha.returncode == 2 and "64 hexadecimal digits" in bad_sha.stderr
    bad_hf = _run("download", "hf:only-a-repo", cache=cache_root)
    assert bad_hf.returncode == 2 and "hf:ORG/REPO/FILE" in bad_hf.stderr
    debug = _run("--debug", "download", "/no/such/model.gguf", cache=cache_root)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
