"""A chat conversation saved as JSON by the REPL's ``/save`` and read back by ``/load``.

The file is plain JSON that other tools can read::

    {"serapeum_chat": 1, "model": "...", "system": "Be brief." | null,
     "options": {"temperature": 0.0, "max_tokens": 400},
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}

``messages`` are OpenAI-style ``{"role", "content"}`` dicts. ``options`` are keyed as the
command line names them (``max_tokens``, as ``-o``, ``--max-tokens`` and ``/set`` do), while
``SavedConversation.options`` and ``save_conversation(options=...)`` use the library's
keywords (``max_new_tokens``), ready for ``LlamaCPP.chat(**options)``; reading accepts both
spellings (files written before the change hold the library's) and checks each value as
``-o`` would. Reading also accepts a bare list of such messages (a leading ``system``
message becomes the system prompt). Writing is atomic: a temporary file in the same
directory renamed over the target, so an interrupted save never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message, MessageRole

__all__ = ["FORMAT_VERSION", "SavedConversation", "load_conversation", "save_conversation"]

FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 2**20  # far more than any context window holds
_CHAT_ROLES = (MessageRole.USER, MessageRole.ASSISTANT)


def _message_tuple(messages: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(messages)


@frozen
class SavedConversation:
    """What a conversation file holds: the turns, the system prompt and the options."""

    messages: tuple[Message, ...] = field(converter=_message_tuple)
    system: str | None = None
    options: dict[str, Any] = field(factory=dict)  # library keywords (max_new_tokens)
    skipped_options: tuple[str, ...] = ()  # options that JSON cannot hold (not saved)


def save_conversation(
    path: Path,
    messages: Sequence[Message],
    *,
    system: str | None,
    options: Mapping[str, Any],
    model: str | None = None,
) -> SavedConversation:
    """Write the conversation to ``path`` atomically; return what was written.

    ``options`` are keyed by the library's keywords (``max_new_tokens``, as ``llm.chat``
    takes them); the file names them as the command line does (``max_tokens``). Options
    that JSON cannot represent are left out and named in ``skipped_options``.
    Raises ``ConfigurationError`` naming the file when it cannot be written.
    """
    path = Path(path).expanduser()
    kept: dict[str, Any] = {}
    skipped: list[str] = []
    for name, value in options.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            skipped.append(name)
        else:
            kept[name] = value
    document = {
        "serapeum_chat": FORMAT_VERSION,
        "model": model,
        "system": system,
        "options": {_cli_key(name): value for name, value in kept.items()},
        "messages": [{"role": m.role.value, "content": m.content} for m in messages],
    }
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    directory = path.parent
    try:
        handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise ConfigurationError(f"cannot save to {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except OSError as exc:
        _remove_quietly(partial)
        raise ConfigurationError(f"cannot save to {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_quietly(partial)
        raise
    return SavedConversation(
        messages=tuple(messages), system=system, options=kept, skipped_options=tuple(skipped)
    )


def load_conversation(path: Path) -> SavedConversation:
    """Read a conversation written by ``save_conversation`` (or a list of messages).

    Raises ``ConfigurationError`` naming the file and the problem.
    """
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigurationError(f"{path} is over {MAX_FILE_BYTES // 2**20} MiB; not a chat")
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text, so not a saved chat") from None
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not JSON ({exc}), so not a saved chat") from None
    except RecursionError:
        raise ConfigurationError(f"{path} is nested too deeply to be a saved chat") from None
    return _conversation(document, path)


def _conversation(document: Any, path: Path) -> SavedConversation:
    if isinstance(document, list):
        document = {"messages": document}
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise ConfigurationError(
            f'{path} is not a saved chat: expected a JSON object with a "messages" list '
            "(as /save writes)"
        )
    system = document.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigurationError(f'{path}: "system" must be a string or null')
    options = document.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigurationError(f'{path}: "options" must be a JSON object')
    options = dict(_option(key, value, path) for key, value in options.items())
    messages = [_message(entry, index, path) for index, entry in enumerate(document["messages"])]
    if messages and messages[0].role is MessageRole.SYSTEM:
        first = messages.pop(0)
        if system is None:
            system = first.content
    for index, message in enumerate(messages):
        if message.role not in _CHAT_ROLES:
            raise ConfigurationError(
                f"{path}: messages[{index}] has role {message.role.value!r}; a chat holds user "
                "and assistant messages (and one system message first)"
            )
    return SavedConversation(messages=messages, system=system, options=options)


def _cli_key(keyword: str) -> str:
    """``max_new_tokens`` -> ``max_tokens``: the name ``-o`` and ``/set`` take."""
    from serapeum.llama_cpp.cli.options import option_spec

    try:
        return option_spec(keyword).key
    except ConfigurationError:  # not a generation option the command line knows: as given
        return keyword


def _option(key: str, value: Any, path: Path) -> tuple[str, Any]:
    """One saved option -> ``(library keyword, value)``, checked as ``-o KEY VALUE`` is."""
    from serapeum.llama_cpp.cli.options import option_spec

    try:
        spec = option_spec(key)
    except ConfigurationError as exc:
        raise ConfigurationError(f'{path}: "options": {exc}') from None
    where = f'{path}: option "{key}"'
    if spec.repeatable:  # stop: a text or a list of texts
        texts = value if isinstance(value, list) else [value]
        if not texts or not all(isinstance(text, str) and text for text in texts):
            raise ConfigurationError(f"{where} must be a non-empty text or a list of them")
        return spec.keyword, list(texts)
    if isinstance(value, str) and spec.key == "grammar":
        if not value.strip():  # a grammar held in the file, never "@FILE" to read
            raise ConfigurationError(f"{where} must be {spec.accepted}")
        return spec.keyword, value
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, bool) or value is None or text.startswith("@"):
        raise ConfigurationError(f"{where} must be {spec.accepted}; got {value!r}")
    return spec.keyword, spec.parse(text, where)


def _message(entry: Any, index: int, path: Path) -> Message:
    if not isinstance(entry, dict):
        raise ConfigurationError(
            f'{path}: messages[{index}] must be an object like {{"role": "user", '
            f'"content": "..."}}, got {type(entry).__name__}'
        )
    role, content = entry.get("role"), entry.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        raise ConfigurationError(
            f'{path}: messages[{index}] needs a string "role" and a string "content"'
        )
    try:
        return Message(role=role, content=content)
    except ValueError as exc:
        raise ConfigurationError(f"{path}: messages[{index}]: {exc}") from None


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
