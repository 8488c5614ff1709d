"""Turning the user's model settings into a local GGUF path through the source plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError
from serapeum.core.plugins import ModelRequest, PluginHost, SourceNotInstalledError

# The distribution that provides the built-in source for each kind of request.
BUILTIN_SOURCE_DISTRIBUTIONS = {
    "path": "serapeum-source-local",
    "url": "serapeum-source-url",
    "hf": "serapeum-source-hf",
}


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def build_model_request(
    *,
    model_path: str | None,
    model_url: str | None,
    hf_model_id: str | None,
    hf_filename: str | None,
    hf_revision: str | None = None,
    options: Mapping[str, Any] | None = None,
    verify: Callable[[Path], None] | None = None,
) -> ModelRequest:
    """Check the model settings (no disk access) and bundle them into a request."""
    given = [
        name
        for name, value in (
            ("model_path", model_path),
            ("model_url", model_url),
            ("hf_model_id", hf_model_id),
        )
        if value is not None
    ]
    if not given:
        raise ConfigurationError(
            "no model given: set model_path to a local GGUF file, model_url to download one, "
            "hf_model_id with hf_filename to fetch one from the Hugging Face Hub, or "
            "server_urls to use models that llama.cpp (or OpenAI-compatible) servers hold"
        )
    if len(given) > 1:
        raise ConfigurationError(
            f"give exactly one model source, got {' and '.join(given)}; keep the one you mean"
        )
    for name, value in (
        ("model_path", model_path),
        ("model_url", model_url),
        ("hf_model_id", hf_model_id),
    ):
        if value is not None and not str(value).strip():
            raise ConfigurationError(f"{name} is empty; give a path, URL or repository id")
    if hf_model_id is not None and not hf_filename:
        raise ConfigurationError(
            f"hf_model_id={hf_model_id!r} needs hf_filename, the GGUF file in that repository "
            "(for example hf_filename='model.Q4_K_M.gguf')"
        )
    sha256 = (options or {}).get("sha256")
    if sha256 is not None and not (
        isinstance(sha256, str) and len(sha256.strip()) == 64 and _is_hex(sha256.strip())
    ):
        raise ConfigurationError(
            f"model_sha256 must be the 64 hexadecimal digits of a SHA-256, got {sha256!r}"
        )
    if hf_model_id is None and (hf_filename is not None or hf_revision is not None):
        raise ConfigurationError("hf_filename and hf_revision are only used with hf_model_id")
    return ModelRequest(
        model_path=None if model_path is None else str(model_path),
        model_url=model_url,
        hf_model_id=hf_model_id,
        hf_filename=hf_filename,
        hf_revision=hf_revision,
        options={k: v for k, v in (options or {}).items() if v is not None},
        verify=verify,
    )


def resolve_model(request: ModelRequest, plugins: PluginHost) -> Path:
    """Ask the sources, highest priority first; the first that handles the request resolves it."""
    for entry in plugins.sources:
        if entry.item.handles(request):
            return Path(entry.item.resolve(request))
    distribution = BUILTIN_SOURCE_DISTRIBUTIONS.get(request.kind)
    installed = ", ".join(e.item.name for e in plugins.sources) or "none"
    raise SourceNotInstalledError(
        f"no installed model source handles {request.describe()}. "
        f"Install the {distribution} plugin (pip install {distribution}; in this repository: "
        f"pip install -e plugins/{distribution}). Installed sources: {installed}",
        distribution=distribution,
    )
