"""LlamaCPP(model_url=...) through the installed url source plugin, against a loopback server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from serapeum.core.plugins import PluginHost
from serapeum.llama_cpp import LlamaCPP
from serapeum_source_url import ChecksumMismatchError, cached_path


def test_llamacpp_downloads_loads_and_completes(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/models/tiny.gguf", model_bytes)
    llm = LlamaCPP(model_url=url, formatter="llama2", temperature=0.0, max_new_tokens=3)
    assert llm.model_path == str(cached_path(url))
    assert llm.complete("hello").raw["usage"]["completion_tokens"] == 3
    again = LlamaCPP(model_url=url, formatter="llama2")  # offline from here on: cache hit
    assert again.loaded_model is llm.loaded_model
    assert len(http_server.requests_for("/models/tiny.gguf")) == 1


def test_model_sha256_is_checked(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    with pytest.raises(ChecksumMismatchError):
        LlamaCPP(model_url=url, formatter="llama2", model_sha256="ab" * 32)
    assert not cached_path(url).exists()
    good = hashlib.sha256(model_bytes).hexdigest()
    assert LlamaCPP(model_url=url, formatter="llama2", model_sha256=good).model_path


def test_malformed_sha256_is_a_configuration_error(cache_root: Path) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        LlamaCPP(model_url="http://127.0.0.1:9/x.gguf", formatter="llama2", model_sha256="abc")


def test_a_third_party_source_takes_precedence_for_what_it_claims(
    http_server: Any, tiny_model_path: Path, plugin_host: PluginHost, cache_root: Path
) -> None:
    from serapeum.core.plugins import ModelSource, hookimpl

    mirror_hits: list[str] = []

    def claims(request: object) -> bool:
        return str(getattr(request, "model_url", "")).startswith("http://mirror.corp/")

    def resolve(request: object) -> Path:
        mirror_hits.append(str(getattr(request, "model_url", "")))
        return tiny_model_path

    class Mirror:
        @hookimpl
        def serapeum_register_sources(self) -> list[ModelSource]:
            return [ModelSource(name="corp-mirror", handles=claims, resolve=resolve, priority=10)]

    plugin_host.register(Mirror(), name="corp-mirror", distribution="corp-mirror-source")
    assert plugin_host.sources[0].item.name == "corp-mirror"
    llm = LlamaCPP(
        model_url="http://mirror.corp/tiny.gguf", formatter="llama2", plugins=plugin_host
    )
    assert mirror_hits == ["http://mirror.corp/tiny.gguf"] and llm.model_path
    assert http_server.log == []  # the built-in url source was never asked
