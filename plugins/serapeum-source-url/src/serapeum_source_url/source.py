"""The ``url`` model source: ``model_url="https://..."`` downloads into the serapeum cache."""

from __future__ import annotations

from pathlib import Path

from serapeum.core.plugins import ModelRequest, ModelSource
from serapeum_source_url.cache_paths import cached_path
from serapeum_source_url.download import download_model


def _handles(request: ModelRequest) -> bool:
    return request.kind == "url" and str(request.model_url).lower().startswith(
        ("http://", "https://")
    )


def _resolve(request: ModelRequest) -> Path:
    url = str(request.model_url)
    return download_model(
        url,
        cached_path(url),
        sha256=request.options.get("sha256"),
        progress=request.options.get("progress"),
        verify=request.verify_file,
    )


URL_SOURCE = ModelSource(
    name="url",
    handles=_handles,
    resolve=_resolve,
    priority=0,
    description="http(s) URLs: verified, resumable downloads into the serapeum cache",
)
