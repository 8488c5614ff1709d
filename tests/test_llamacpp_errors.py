"""Every configuration and request error: typed, clear, raised before inference, lock never held."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.errors import ConfigurationError, MalformedGGUFError
from serapeum.core.plugins import PluginHost, SourceNotInstalledError, UnknownPluginError
from serapeum.llama_cpp import (
    ContextWindowExceededError,
    LlamaCPP,
    MissingFormatterError,
    NotGGUFError,
)


def test_no_model_source(plugin_host: PluginHost) -> None:
    with pytest.raises(ConfigurationError, match="no model given: set model_path"):
        LlamaCPP(formatter="llama2", plugins=plugin_host)


def test_two_model_sources(tiny_model_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"exactly one model source.*model_path and model_url"
    ):
        LlamaCPP(model_path=str(tiny_model_path), model_url="http://x/y.gguf", formatter="llama2")


def test_hf_model_id_without_filename() -> None:
    with pytest.raises(ConfigurationError, match="needs hf_filename"):
        LlamaCPP(hf_model_id="org/repo", formatter="llama2")


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        LlamaCPP(model_path=str(missing), formatter="llama2")
    assert isinstance(info.value, FileNotFoundError)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        LlamaCPP(model_path=str(tmp_path), formatter="llama2")


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "it is empty"),
        (b"<!DOCTYPE html><html>Not found</html>", "HTML or JSON page"),
        (b"\x00\x01binary-safetensors", "starts with"),
    ],
)
def test_not_gguf(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(NotGGUFError, match=reason):
        LlamaCPP(model_path=str(path), formatter="llama2")


def test_truncated_gguf_is_refused_before_llama_cpp(tmp_path: Path, tiny_model_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    path.write_bytes(tiny_model_path.read_bytes()[:5000])
    with pytest.raises(MalformedGGUFError, match="download it again") as caught:
        LlamaCPP(model_path=str(path), formatter="llama2")
    assert isinstance(caught.value, NotGGUFError)


def test_missing_formatters_lists_the_installed_ones(tiny_model_path: Path) -> None:
    with pytest.raises(MissingFormatterError) as info:
        LlamaCPP(model_path=str(tiny_model_path))
    message = str(info.value)
    assert "missing prompt formatters" in message
    assert "llama2, llama3, mistral" in message
    assert isinstance(info.value, ValueError)


def test_only_one_formatter_function_is_not_enough(tiny_model_path: Path) -> None:
    with pytest.raises(MissingFormatterError, match="needs messages_to_prompt"):
        LlamaCPP(model_path=str(tiny_model_path), completion_to_prompt=lambda c: c)


def test_unknown_formatter_name(tiny_model_path: Path) -> None:
    with pytest.raises(UnknownPluginError, match=r"Did you mean .*'llama3'"):
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama-33")


def test_formatter_of_the_wrong_type(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="registered name or a PromptFormatter"):
        LlamaCPP(model_path=str(tiny_model_path), formatter=42)  # type: ignore[arg-type]


def test_system_prompt_that_completion_function_cannot_take(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="would drop it"):
        LlamaCPP(
            model_path=str(tiny_model_path),
            messages_to_prompt=lambda messages: "x",
            completion_to_prompt=lambda completion: completion,
            system_prompt="Be nice",
        )


@pytest.mark.parametrize(
    "settings, complaint",
    [
        ({"temperature": 1.5}, "temperature must be a number from 0.0 to 1.0"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"context_window": -5}, "context_window must be a positive integer"),
        ({"n_gpu_layers": -2}, "n_gpu_layers must be an integer >= -1"),
        ({"generate_kwargs": {"temperature": 3}}, "temperature"),
        ({"generate_kwargs": {"max_new_tokens": -1}}, "max_new_tokens"),
    ],
)
def test_out_of_range_numbers(tiny_model_path: Path, settings: dict, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", **settings)


def test_url_and_hf_name_the_plugin_to_install(plugin_host: PluginHost) -> None:
    for source in ("url", "hf"):  # as if those distributions were not installed
        if source in {info.name for info in plugin_host.plugins()}:
            plugin_host.unregister(source)
    with pytest.raises(SourceNotInstalledError, match="pip install serapeum-source-url") as info:
        LlamaCPP(
            model_url="https://example.invalid/m.gguf", formatter="llama2", plugins=plugin_host
        )
    assert info.value.distribution == "serapeum-source-url"
    with pytest.raises(SourceNotInstalledError, match="serapeum-source-hf"):
        LlamaCPP(
            hf_model_id="org/repo", hf_filename="m.gguf", formatter="llama2", plugins=plugin_host
        )


def test_without_the_local_source_plugin_paths_name_it(
    tiny_model_path: Path, plugin_host: PluginHost
) -> None:
    plugin_host.unregister("local")
    with pytest.raises(SourceNotInstalledError, match="serapeum-source-local"):
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", plugins=plugin_host)


def test_prompt_longer_than_the_context_window(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", context_window=64)
    long_prompt = "hello world " * 100
    for call in (
        lambda: llm.complete(long_prompt),
        lambda: llm.complete(long_prompt, stream=True),  # raises at the call, not at next()
    ):
        with pytest.raises(ContextWindowExceededError, match="context window is 64 tokens") as info:
            call()
        assert isinstance(info.value, ValueError)
        assert info.value.prompt_tokens > 64
    assert not llm.loaded_model.lock.locked()
    assert llm.complete("hello", max_new_tokens=2).text is not None  # still usable


def test_per_call_out_of_range_values(tiny_llm: LlamaCPP) -> None:
    with pytest.raises(ConfigurationError, match="temperature"):
        tiny_llm.complete("hi", temperature=2.0)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        tiny_llm.complete("hi", max_new_tokens=0)
    assert not tiny_llm.loaded_model.lock.locked()


def _failing_processor(_input_ids: object, _logits: object) -> object:
    raise ZeroDivisionError("a user's logits processor failed")


def test_backend_error_mid_call_releases_the_lock(tiny_llm: LlamaCPP) -> None:
    with pytest.raises(ZeroDivisionError):
        tiny_llm.complete("hi", logits_processor=_failing_processor)
    assert not tiny_llm.loaded_model.lock.locked()
    with pytest.raises(ZeroDivisionError):
        list(tiny_llm.complete("hi", stream=True, logits_processor=_failing_processor))
    assert not tiny_llm.loaded_model.lock.locked()
    # ... and the model still works, with the failed request's partial state cleaned up
    assert tiny_llm.complete("hi", max_new_tokens=2).usage is not None


def test_unknown_generation_option_is_refused_before_generation(tiny_llm: LlamaCPP) -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown generation option.*no_such_option.*top_k"
    ):
        tiny_llm.complete("hi", no_such_option=1)
    with pytest.raises(ConfigurationError, match="echo"):
        tiny_llm.complete("hi", echo=True)
    assert not tiny_llm.loaded_model.lock.locked()


def test_a_context_window_the_machine_cannot_hold_is_refused_before_loading(
    tiny_model_path: Path,
) -> None:
    # 10**9 tokens x 512 bytes of KV cache each: llama.cpp would try to allocate ~500 GB.
    with pytest.raises(ConfigurationError, match="KV cache") as caught:
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", context_window=10**9)
    assert "use at most" in str(caught.value)


def test_the_context_memory_bound_uses_the_files_shape(tiny_model_path: Path) -> None:
    from serapeum.llama_cpp.gguf_file import require_context_fits, require_gguf

    checked = require_gguf(tiny_model_path)
    assert checked.kv_bytes_per_token == 2 * 4 * (16 + 16) * 2  # layers x kv heads x dims x f16
    require_context_fits(checked, 4096, memory=4096 * 512)
    with pytest.raises(ConfigurationError):
        require_context_fits(checked, 4097, memory=4096 * 512)
