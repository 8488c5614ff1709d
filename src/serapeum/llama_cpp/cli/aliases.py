"""Model aliases: short names for ``-m``, built in (the demo models) or the user's own.

The user's aliases live in ``aliases.json`` in the serapeum cache directory, written
atomically (a temporary file renamed into place), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.cache_dir import cache_dir, ensure_cache_directory
from serapeum.llama_cpp.demo import CHAT_MODEL_FILE, CHAT_PACKAGE, DEMO_MODEL_FILE, DEMO_PACKAGE

__all__ = [
    "BUILTIN_ALIASES",
    "CHAT_ALIAS",
    "COMPLETE_ALIAS",
    "Alias",
    "aliases_file",
    "check_alias_name",
    "remove_user_alias",
    "set_user_alias",
    "user_aliases",
]

COMPLETE_ALIAS = "gemma3-270m"
CHAT_ALIAS = "smollm2-135m-instruct"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
MAX_FILE_BYTES = 1 * 2**20


def _gemma() -> Path:
    from serapeum.llama_cpp.demo import demo_model_path

    return demo_model_path()


def _smollm2() -> Path:
    from serapeum.llama_cpp.demo import chat_model_path

    return chat_model_path()


@frozen
class Alias:
    """A built-in alias: its description and how to find its file (installed on demand).

    ``base_model``: the model continues text and follows no chat format, so ``complete``
    sends prompts to it as written (and ``chat``/``serve`` warn). ``file_name``: its GGUF's
    name, so a ``-m`` close to that name is pointed at the alias without installing anything.
    """

    name: str
    description: str
    path: Callable[[], Path]
    base_model: bool = False
    file_name: str = ""


BUILTIN_ALIASES: Mapping[str, Alias] = {
    COMPLETE_ALIAS: Alias(
        COMPLETE_ALIAS,
        "Gemma 3 270M Q4_K_M, a base model (text completion, not chat), "
        f"from the {DEMO_PACKAGE} package",
        _gemma,
        base_model=True,
        file_name=DEMO_MODEL_FILE,
    ),
    CHAT_ALIAS: Alias(
        CHAT_ALIAS,
        f"SmolLM2-135M-Instruct Q4_1, an instruction-tuned chat model, from the {CHAT_PACKAGE} "
        "package",
        _smollm2,
        file_name=CHAT_MODEL_FILE,
    ),
}


def aliases_file() -> Path:
    return cache_dir() / "aliases.json"


def user_aliases() -> dict[str, str]:
    """The user's aliases (name -> MODEL); an unreadable file is a ``ConfigurationError``."""
    path = aliases_file()
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read the aliases file {path}: {exc.strerror}") from exc
    try:
        loaded = json.loads(data.decode("utf-8")) if len(data) <= MAX_FILE_BYTES else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        loaded = None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
    ):
        raise ConfigurationError(
            f"the aliases file {path} is damaged (not a JSON object of name -> model); "
            "fix it or delete it"
        )
    return dict(loaded)


def check_alias_name(name: str) -> None:
    """Refuse names that collide with built-ins or could be read as a path, URL or hf: model."""
    if name in BUILTIN_ALIASES:
        raise ConfigurationError(f"{name!r} is a built-in alias; choose another name")
    if not _NAME.fullmatch(name) or name.lower().endswith(".gguf"):
        raise ConfigurationError(
            f"{name!r} cannot be an alias: use letters, digits, '.', '_', '+' and '-' (at most "
            "64, starting with a letter or digit), so it cannot be mistaken for a path, a URL "
            "or an hf: model, and no .gguf ending"
        )


def _model_value(model: str) -> str:
    """What an alias stores: a built-in alias, a URL, hf:... or an absolute path to a file."""
    if model in BUILTIN_ALIASES or model.startswith("hf:"):
        return model
    if "://" in model and not model.startswith("file:"):
        return model
    path = Path(model.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"{model!r} is not a model file, an http(s) URL, hf:ORG/REPO/FILE or a built-in "
            f"alias ({', '.join(BUILTIN_ALIASES)})"
        )
    return os.path.abspath(path)  # a symbolic link stays the link, as the user named it


def _write(aliases: Mapping[str, str]) -> None:
    path = aliases_file()
    ensure_cache_directory(path.parent)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".aliases.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(dict(sorted(aliases.items())), stream, indent=2, ensure_ascii=False)
            stream.write("\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigurationError(f"cannot write the aliases file {path}: {exc.strerror}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def set_user_alias(name: str, model: str) -> str:
    """Save ``name`` -> ``model`` (a relative path is stored absolute); return what was stored."""
    check_alias_name(name)
    value = _model_value(model)
    aliases = user_aliases()
    aliases[name] = value
    _write(aliases)
    return value


def remove_user_alias(name: str) -> str:
    """Forget ``name``; return the MODEL it named."""
    if name in BUILTIN_ALIASES:
        raise ConfigurationError(f"{name!r} is a built-in alias; it cannot be removed")
    aliases = user_aliases()
    if name not in aliases:
        known = ", ".join(aliases) or "none"
        raise ConfigurationError(f"no user alias {name!r} (yours: {known})")
    value = aliases.pop(name)
    _write(aliases)
    return value
