"""The local source passes serapeum's conformance kit."""

from __future__ import annotations

from pathlib import Path

from serapeum.core.plugins import ModelRequest
from serapeum.llama_cpp.testing.conformance import check_source
from serapeum_source_local import LOCAL_SOURCE


def test_conforms_for_paths_and_file_uris(tiny_model_path: Path) -> None:
    assert check_source(LOCAL_SOURCE, ModelRequest(model_path=str(tiny_model_path)))
    uri = tiny_model_path.resolve().as_uri()
    assert check_source(LOCAL_SOURCE, ModelRequest(model_path=uri)) == tiny_model_path.resolve()
