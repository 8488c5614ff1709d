"""The engine's side of the backend seam: choosing a backend, and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import serapeum.llama_cpp.backend as builtin_backend
from serapeum.core.errors import BackendNotInstalledError, ConfigurationError
from serapeum.core.plugins import BackendCapabilities, LoadedModel, PluginHost
from serapeum.llama_cpp import LlamaCPP


def test_server_urls_without_the_server_plugin_names_the_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERAPEUM_DISABLE_PLUGINS", "serapeum-backend-server")
    host = PluginHost(strict=False)
    host.load_entry_points()
    assert host.backends.names() == ["llama-cpp"]
    with pytest.raises(BackendNotInstalledError, match="pip install serapeum-backend-server") as e:
        LlamaCPP(server_urls=["http://127.0.0.1:1"], formatter="llama2", plugins=host)
    assert e.value.distribution == "serapeum-backend-server"


def test_an_unknown_backend_is_an_unknown_plugin(plugin_host: PluginHost) -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'server'"):
        LlamaCPP(backend="sever", server_urls=["http://127.0.0.1:1"], plugins=plugin_host)


def test_server_settings_with_the_in_process_backend_are_refused(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="server_urls is for a server backend"):
        LlamaCPP(
            model_path=str(tiny_model_path),
            backend="llama-cpp",
            server_urls=["http://127.0.0.1:1"],
            formatter="llama2",
        )


def test_a_model_file_with_the_server_backend_is_refused(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="loads no local model file"):
        LlamaCPP(
            model_path=str(tiny_model_path),
            server_urls=["http://127.0.0.1:1"],
            formatter="llama2",
        )


def test_server_options_are_checked_before_any_connection() -> None:
    """Port 1 is never contacted: the typo is found first."""
    with pytest.raises(ConfigurationError, match="did you mean 'read_timeout'"):
        LlamaCPP(
            server_urls=["http://127.0.0.1:1"],
            formatter="llama2",
            model_kwargs={"read_timout": 5},
        )


def test_the_in_process_model_declares_the_whole_protocol(tiny_llm: LlamaCPP) -> None:
    model = tiny_llm.loaded_model
    assert isinstance(model, LoadedModel)
    assert isinstance(model, builtin_backend.LlamaCppModel)
    assert model.capabilities == BackendCapabilities(json_schema=True, grammar=True, logprobs=True)
    assert tiny_llm.supports_json_schema


def test_closing_the_in_process_model_frees_it(tiny_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        model_kwargs={"n_batch": 64},  # its own cache entry: other tests keep theirs
    )
    assert llm.complete("Hi", max_new_tokens=2).text is not None
    llm.loaded_model.close()
    llm.loaded_model.close()  # idempotent
    assert os.path.exists(tiny_model_path)
