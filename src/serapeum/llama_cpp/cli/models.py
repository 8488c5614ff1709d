"""The command line's MODEL: a path, an http(s) URL, ``hf:ORG/REPO/FILE`` or an alias.

``model_fields`` turns it into ``LlamaCPP``'s model fields; a missing file is refused in the
command line's words: a did-you-mean when its name is close to an alias or a cached model's
file name (an alias's own file is named by the alias), else what ``-m`` accepts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError
from serapeum.core.plugins import ModelRequest
from serapeum.llama_cpp.cli.aliases import BUILTIN_ALIASES, user_aliases
from serapeum.llama_cpp.cli.caches import hf_models, serapeum_models
from serapeum.llama_cpp.cli.output import note
from serapeum.llama_cpp.gguf_file import verify_model_file
from serapeum.llama_cpp.sources import build_model_request

__all__ = ["base_model_alias", "default_model_path", "model_fields", "model_request"]

ACCEPTS = "-m takes a GGUF file's path, an http(s) URL, hf:ORG/REPO/FILE or an alias"


def default_model_path(alias: str) -> str:
    """The file of a built-in alias used as a command's default, saying so on stderr."""
    entry = BUILTIN_ALIASES[alias]
    note(f"Using the default model {alias} ({entry.description.split(',')[0]})...")
    return str(entry.path())


def base_model_alias(model: str | None, default_alias: str) -> str | None:
    """The built-in alias MODEL names (directly or through a user alias) when it is a base
    model, which continues text rather than following a chat; else None."""
    name = default_alias if model is None else model
    if name not in BUILTIN_ALIASES:
        try:
            name = user_aliases().get(name, name)
        except ConfigurationError:
            return None  # the model's own loading reports the damaged file
    alias = BUILTIN_ALIASES.get(name)
    return name if alias is not None and alias.base_model else None


def model_request(
    model: str, *, revision: str | None, sha256: str | None, quiet: bool
) -> ModelRequest:
    """Turn the command line's MODEL into the request the engine would build.

    Like the engine's, it carries the file check (structure, then the checked load in a
    child process), so a download is installed in the cache only if it can load.
    """
    return build_model_request(
        **model_fields(model, revision),
        options={"sha256": sha256, "progress": not quiet},
        verify=verify_model_file,
    )


def model_fields(model: str, revision: str | None = None) -> dict[str, Any]:
    """``LlamaCPP``'s model fields for MODEL (aliases followed, user aliases once)."""
    fields: dict[str, Any] = {
        "model_path": None,
        "model_url": None,
        "hf_model_id": None,
        "hf_filename": None,
    }
    mine = user_aliases() if model not in BUILTIN_ALIASES else {}
    target = mine.get(model, model)
    if target in BUILTIN_ALIASES:
        fields["model_path"] = str(BUILTIN_ALIASES[target].path())
    elif target.startswith("hf:"):
        parts = target.removeprefix("hf:").strip("/").split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(
                f"{target!r}: write Hugging Face models as hf:ORG/REPO/FILE, e.g. "
                "hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf"
            )
        fields.update(
            hf_model_id=f"{parts[0]}/{parts[1]}", hf_filename=parts[2], hf_revision=revision
        )
        return fields
    elif "://" in target and not target.startswith("file:"):
        fields["model_url"] = target
    else:
        _check_local(target, mine)
        fields["model_path"] = target
    if revision is not None:
        raise ConfigurationError("--revision applies to hf: models only")
    return fields


def _check_local(model: str, mine: dict[str, str]) -> None:
    """A path that names nothing: suggest the alias or cached model it was probably meant as."""
    path = Path(model.removeprefix("file://")).expanduser()
    try:
        if path.exists() or path.is_symlink():
            return  # the engine checks what it is
    except OSError:
        return
    candidates: dict[str, str] = {name: name for name in (*BUILTIN_ALIASES, *mine)}
    for name, alias in BUILTIN_ALIASES.items():  # the alias, not the cache path of its file
        if alias.file_name:
            candidates.setdefault(alias.file_name, name)
            candidates.setdefault(Path(alias.file_name).stem, name)
    try:
        for cached in (*serapeum_models(), *hf_models()):
            shown = cached.name or str(cached.path)
            candidates.setdefault(cached.path.name, shown)
            candidates.setdefault(cached.path.stem, shown)
    except ConfigurationError:
        pass  # an unreadable cache only costs the suggestion
    typed = path.name if path.name else model
    close = difflib.get_close_matches(typed, list(candidates), n=1, cutoff=0.75)
    if not close and len(typed) >= 4:  # the start of a longer name: "smollm2" for its alias
        close = sorted(name for name in candidates if name.startswith(typed))[:1]
    if close:
        raise ConfigurationError(
            f"model {model!r} is not a file and not an alias; did you mean "
            f"{candidates[close[0]]}? (serapeum-llama-cpp aliases lists the aliases)"
        )
    if "/" not in model and "\\" not in model and not model.lower().endswith(".gguf"):
        known = ", ".join([*BUILTIN_ALIASES, *mine])
        raise ConfigurationError(
            f"model {model!r} is not a file and not an alias (aliases: {known}); give a "
            "path, an http(s) URL or hf:ORG/REPO/FILE"
        )
    raise ConfigurationError(
        f"model file {str(path)!r} does not exist; {ACCEPTS} (serapeum-llama-cpp aliases "
        "lists the aliases, serapeum-llama-cpp models the cached files)"
    )
