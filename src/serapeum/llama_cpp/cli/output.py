"""Writing to the terminal: standard output that survives closed pipes, one-line errors.

A closed reader (``| head``) becomes ``OutputClosed`` and exit 141 with nothing printed;
an error is one harmless line on stderr (``--debug`` adds the traceback first).
"""

from __future__ import annotations

import io
import os
import re
import sys
import traceback
import unicodedata
from typing import TextIO

from serapeum.core.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    PromptFormatError,
)
from serapeum.llama_cpp.errors import (
    ChatTemplateError,
    ContextWindowExceededError,
    IncompleteJSONError,
    UnsafeModelError,
)

__all__ = [
    "EXIT_CLOSED_OUTPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "PROG",
    "USER_ERRORS",
    "OutputClosed",
    "UsageError",
    "note",
    "one_line",
    "out",
    "report",
    "silence_stdout",
    "tolerant_stdout",
]

PROG = "serapeum-llama-cpp"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_CLOSED_OUTPUT = 1, 2, 130, 141

# The user's errors (exit 2); every other SerapeumError is the environment's (exit 1).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigurationError,  # options, paths, model files (NotGGUF, Malformed, ModelFile), schemas
    ChecksumMismatchError,
    ChatTemplateError,
    PromptFormatError,
    ContextWindowExceededError,
    IncompleteJSONError,
    UnsafeModelError,  # the named file crashes llama.cpp in the checked load
)


class OutputClosed(Exception):
    """Standard output's reader went away (``| head``): stop quietly."""


class UsageError(Exception):
    """The command line is wrong (argparse's words, or ours about it): exit 2."""


def out(text: str = "", end: str = "\n") -> None:
    """Write to stdout now; a closed reader becomes ``OutputClosed``, never a traceback."""
    if sys.stdout is None:  # started with stdout closed (>&-)
        return
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise OutputClosed from exc


def note(text: str) -> None:
    """A line for the person at the terminal (stderr); a closed stderr is ignored."""
    stream: TextIO | None = sys.stderr
    try:
        if stream is not None:
            print(text, file=stream, flush=True)
    except (OSError, ValueError):
        pass


def tolerant_stdout() -> None:
    """Model text the terminal cannot encode becomes ``?`` instead of ``UnicodeEncodeError``."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="replace")


def silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the exit-time flush cannot fail again.

    The recipe of Python's signal documentation ("Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def one_line(message: str) -> str:
    """Newlines become spaces; control and format characters (terminal escapes, bidi
    overrides, from a file's metadata or a template) are shown escaped, never sent raw."""
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in {"Cc", "Cf"}
        else ch
        for ch in message
    )


# The engine names its parameters; the command line names its options.
_IN_CLI_WORDS: tuple[tuple[str, str], ...] = (
    ("max_new_tokens", "--max-tokens"),
    ("max_tokens", "--max-tokens"),
    ("context_window", "--ctx"),
    ("n_ctx", "--ctx"),
    ("n_gpu_layers", "--n-gpu-layers"),
    ("n_parallel", "--n-parallel"),
    ("system_prompt", "--system"),
)
_OPTION_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (ContextWindowExceededError, "--ctx sets the context window"),
    (IncompleteJSONError, "--max-tokens sets the most tokens to generate"),
)


def in_cli_words(message: str) -> str:
    """The library's parameter names in ``message`` replaced by the options that set them."""
    for name, flag in _IN_CLI_WORDS:
        message = re.sub(rf"(?<![\w-]){name}\b", flag, message)
    return message


def report(error: BaseException, *, debug: bool, translate: bool = True) -> None:
    """One line on stderr (a traceback first with ``--debug``); a closed stderr is ignored.

    ``translate``: the message is the library's, so its parameter names become the options
    that set them (the command line's own messages already use its words).
    """
    try:
        if debug:
            traceback.print_exception(error)
        message = one_line(str(error))
        message = (in_cli_words(message) if translate else message) or type(error).__name__
        for kind, hint in _OPTION_HINTS:
            if isinstance(error, kind) and hint.split()[0] not in message:
                message += f" ({hint})"
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr closed or gone
        pass
