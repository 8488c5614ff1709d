"""Cheap checks on a model file before it reaches llama.cpp."""

from __future__ import annotations

from pathlib import Path

from serapeum.llama_cpp.errors import NotGGUFError

GGUF_MAGIC = b"GGUF"


def require_gguf(path: Path) -> None:
    """Raise ``NotGGUFError`` unless ``path`` starts with the GGUF magic bytes."""
    with path.open("rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head == GGUF_MAGIC:
        return
    if not head:
        found = "it is empty"
    elif head.lstrip().startswith((b"<", b"{")):
        found = "it looks like an HTML or JSON page, perhaps an error page saved as a model"
    else:
        found = f"it starts with {head!r} instead of {GGUF_MAGIC!r}"
    raise NotGGUFError(
        f"{str(path)!r} is not a GGUF model file: {found}. llama.cpp loads only .gguf files; "
        "download the GGUF version of the model or convert it with llama.cpp's "
        "convert_hf_to_gguf.py"
    )
