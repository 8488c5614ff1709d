"""The url source passes serapeum's conformance kit (against the loopback server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serapeum.core.plugins import ModelRequest
from serapeum.llama_cpp.testing.conformance import check_source
from serapeum_source_url import URL_SOURCE


def test_conforms(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/kit/tiny.gguf", model_bytes)
    path = check_source(URL_SOURCE, ModelRequest(model_url=url))
    assert path.read_bytes() == model_bytes
