"""Reading what the user gives: arguments, standard input and named files, as UTF-8 text.

Anything that is not text (UTF-16, Latin-1, binary data, over 16 MiB) is refused in one
line naming where it came from, as a ``ConfigurationError`` (exit 2).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from serapeum.core.errors import ConfigurationError

__all__ = [
    "MAX_INPUT_BYTES",
    "decode_text",
    "read_limited",
    "read_text_file",
    "require_utf8_arguments",
    "stdin_is_piped",
    "stdin_or_none",
]

MAX_INPUT_BYTES = 16 * 2**20  # stdin and named files: far more than any context holds


def decode_text(data: bytes, what: str) -> str:
    """Decode ``data`` as UTF-8 text, or say in one line why it is not text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigurationError(
            f"{what} looks like UTF-16; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{what} is not valid UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None
    if "\x00" in text:
        raise ConfigurationError(
            f"{what} is binary data, not text (a NUL byte at offset {text.index(chr(0))})"
        )
    return text.removeprefix("\ufeff")


def read_limited(handle: Any, what: str) -> str:
    """At most ``MAX_INPUT_BYTES`` from a binary handle, as text."""
    data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ConfigurationError(f"{what} is over {MAX_INPUT_BYTES // 2**20} MiB; refusing it")
    return decode_text(data, what)


def read_text_file(path: str, what: str) -> str:
    """The text of the file at ``path``; a FIFO (``<(jq ...)``) is fine, /dev/zero ends at
    the size limit."""
    try:
        with open(path, "rb") as handle:
            return read_limited(handle, what)
    except OSError as exc:
        raise ConfigurationError(f"{what}: {exc.strerror or exc}") from exc


def require_utf8_arguments(argv: Sequence[str]) -> None:
    """Python hands undecodable argv bytes over as lone surrogates; refuse them by name."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            errors = "surrogateescape" if _from_undecodable_bytes(argument) else "replace"
            raw = argument.encode("utf-8", errors)
            shown = raw.decode("utf-8", "backslashreplace")
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ConfigurationError(
                f"argument '{shown}' is not valid UTF-8 text (check the terminal's encoding)"
            ) from None


def _from_undecodable_bytes(argument: str) -> bool:
    """Whether every surrogate is one surrogateescape made (so the original bytes can be shown)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in argument)


def stdin_is_piped() -> bool:
    return sys.stdin is not None and not sys.stdin.isatty()


def stdin_or_none() -> str | None:
    """All of standard input as text, or None when it is a terminal (or closed)."""
    if not stdin_is_piped():
        return None
    try:
        return read_limited(getattr(sys.stdin, "buffer", sys.stdin), "standard input")
    except OSError as exc:
        raise ConfigurationError(f"cannot read standard input: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # a text-only stdin (embedding) that was not UTF-8
        raise ConfigurationError(f"standard input is not valid UTF-8 text ({exc.reason})") from None
