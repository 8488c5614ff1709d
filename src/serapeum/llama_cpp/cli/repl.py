"""The interactive chat of ``serapeum-llama-cpp chat``: a REPL with line editing and commands.

Lines are read with readline when it is available (editing, Up/Down history kept in the
serapeum cache as ``chat_history``); ``/commands`` are answered locally (see
``repl_commands``); everything else is a message, streamed back as the model writes it.

Ctrl-C while an answer streams stops that answer only: a cancel token ends generation
within a token and the stream is closed, freeing the model; the question and the partial
answer stay in the conversation (stopped before any text, neither stays, so user and
assistant turns keep alternating). Ctrl-C at the prompt clears the line; Ctrl-D leaves.
A library error (a refused option, a conversation too long for the context) is reported in
one line and the failing question is dropped.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import SerapeumError
from serapeum.core.llms import Message
from serapeum.llama_cpp.cli.output import PROG, OutputClosed, note, out, report
from serapeum.llama_cpp.cli.repl_commands import ChatState, run_command
from serapeum.llama_cpp.errors import ContextWindowExceededError

if TYPE_CHECKING:
    from serapeum.llama_cpp.llm import LlamaCPP

__all__ = ["HISTORY_FILE", "run_repl"]

PROMPT, MORE = "> ", "... "
BLOCK = '"""'
HISTORY_FILE = "chat_history"  # in the serapeum cache directory
HISTORY_LENGTH = 1000
STOPPED = "[stopped]"
STOPPED_EARLY = "[stopped before the answer began; the question was not kept]"


def run_repl(
    llm: LlamaCPP,
    options: dict[str, Any],
    *,
    system: str | None = None,
    conversation: Path | None = None,
) -> int:
    """Chat with ``llm`` in the terminal until ``/exit`` or Ctrl-D; return the exit status.

    ``options`` are per-call generation options (``llm.chat(..., **options)``), changed by
    ``/set``; ``system`` a system prompt sent first; ``conversation`` a file written by
    ``/save`` to continue (its options, then ``options``, apply; ``system`` replaces its
    system prompt). ``/unset`` returns an option to its value here (or the file's). A
    conversation file that cannot be read raises ``ConfigurationError``.
    """
    state = ChatState.from_command_line(options, system, model=_model_name(llm))
    if conversation is not None:
        _continue(state, conversation)
    if isinstance(sys.stdin, io.TextIOWrapper):  # bad bytes become surrogates, refused per line
        sys.stdin.reconfigure(errors="surrogateescape")
    note(
        f"Chatting with {state.model} ({llm.formatter_name} format). "
        "/help for commands, /exit or Ctrl-D to leave."
    )
    save_history = _start_history()
    interrupts = _Interrupts()
    try:
        with interrupts.installed():
            return _loop(llm, state, interrupts, debug=bool(getattr(llm, "verbose", False)))
    finally:
        save_history()


def _model_name(llm: Any) -> str:
    return Path(str(getattr(llm, "model_path", None) or llm.metadata.model_name)).name


def _continue(state: ChatState, path: Path) -> None:
    from serapeum.llama_cpp.cli.conversation_file import load_conversation

    saved = load_conversation(path)
    state.begin(saved, str(path))
    note(f"Continuing {path}: {len(saved.messages)} messages (/history shows them).")


def _loop(llm: LlamaCPP, state: ChatState, interrupts: _Interrupts, *, debug: bool) -> int:
    interrupted_before = False
    while True:
        try:
            with interrupts.mode("prompt"):
                message = _read_message()
        except KeyboardInterrupt:  # Ctrl-C at the prompt: clear the line
            out()
            if interrupted_before:
                note("(Ctrl-D or /exit to leave)")
            interrupted_before = True
            continue
        interrupted_before = False
        if message is None:  # Ctrl-D
            out()
            return 0
        text, block = message  # a block is a message, even one that starts with "/"
        if not block and text.startswith("/") and not text.startswith("//"):
            if run_command(state, text):
                return 0
            continue
        if not block:
            text = text.removeprefix("/")  # "//x" sends "/x"
        if text.strip():
            _ask(llm, state, text, interrupts, debug=debug)


def _ask(
    llm: LlamaCPP, state: ChatState, question: str, interrupts: _Interrupts, *, debug: bool
) -> None:
    """Send the conversation plus ``question``; keep both unless the library refused them."""
    answer = _Answer()
    try:
        with interrupts.mode("answer") as cancel:
            _stream(llm, state.to_send(question), state.options, cancel, answer)
    except SerapeumError as error:
        if answer.started:
            out()
        report(error, debug=debug)
        if isinstance(error, ContextWindowExceededError) and state.messages:
            note("The conversation no longer fits: /reset starts over.")
        return
    except KeyboardInterrupt:  # a third Ctrl-C before the stream began
        out()
        answer.stopped = True
    if not state.add_turn(question, answer.text, stopped=answer.stopped):
        note(STOPPED_EARLY)
    elif answer.stopped:
        note(STOPPED)


class _Answer:
    """The answer so far, kept when Ctrl-C stops the stream midway."""

    def __init__(self) -> None:
        self.text = ""
        self.started = False
        self.stopped = False


def _stream(
    llm: LlamaCPP,
    messages: list[Message],
    options: dict[str, Any],
    cancel: CancelToken,
    answer: _Answer,
) -> None:
    call = {**options, "cancel": cancel}
    chunks = llm.chat(messages, stream=True, **call)
    try:
        for chunk in chunks:
            if cancel.is_set():
                break
            if chunk.delta:
                answer.started = True
                out(chunk.delta, end="")
                answer.text += chunk.delta
    except KeyboardInterrupt:  # a third Ctrl-C: stop without waiting for the token
        pass
    finally:  # ends generation now and frees the model for the next question
        _close(chunks)
        answer.stopped = cancel.is_set()
    out()


def _close(chunks: Any) -> None:
    for _ in range(3):  # a Ctrl-C landing inside close() must not leave the stream open
        try:
            chunks.close()
            return
        except KeyboardInterrupt:
            continue


class _Interrupts:
    """Turns SIGINT into what the REPL is doing wants.

    At the prompt it raises ``KeyboardInterrupt`` (readline clears the line). While an
    answer streams it sets the answer's cancel token, from a helper thread: the token takes
    a lock that the interrupted main thread may be holding. A third Ctrl-C during one answer
    raises ``KeyboardInterrupt`` to stop at once. Anywhere else (a command) it is ignored,
    so a second press after an answer ended cannot kill the chat.
    """

    def __init__(self) -> None:
        self._mode = "idle"
        self._cancel: CancelToken | None = None
        self._presses = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; keep Python's behaviour
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def mode(self, mode: str) -> Iterator[CancelToken]:
        cancel = CancelToken()
        self._mode, self._cancel, self._presses = mode, cancel, 0
        try:
            yield cancel
        finally:
            self._mode, self._cancel = "idle", None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._mode == "prompt":
            raise KeyboardInterrupt
        if self._mode != "answer" or self._cancel is None:
            return
        self._presses += 1
        if self._presses == 1:
            threading.Thread(target=self._cancel.set, name="repl-cancel", daemon=True).start()
        elif self._presses >= 3:
            raise KeyboardInterrupt


# -- reading lines ---------------------------------------------------------------------------


def _read_message() -> tuple[str, bool] | None:
    """One message or command: a line, lines joined by a trailing ``\\``, or a block between
    two lines of ``\"\"\"`` (then True: sent as written). None at end of input (Ctrl-D)."""
    line = _read_line(PROMPT)
    if line is None:
        return None
    stripped = line.strip()
    if stripped.startswith(BLOCK):
        rest = stripped.removeprefix(BLOCK)
        if rest.endswith(BLOCK):  # """one line"""
            return rest.removesuffix(BLOCK), True
        return _read_block([rest] if rest else []), True
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        more = _read_line(MORE)
        if more is None:
            break
        line = more
    else:
        lines.append(line)
    return "\n".join(lines), False


def _read_block(lines: list[str]) -> str:
    """Lines up to one that ends with ``\"\"\"`` (Ctrl-D ends the block too)."""
    while True:
        line = _read_line(MORE)
        if line is None:
            break
        if line.rstrip().endswith(BLOCK):
            last = line.rstrip().removesuffix(BLOCK)
            if last:
                lines.append(last)
            break
        lines.append(line)
    return "\n".join(lines)


def _read_line(prompt: str) -> str | None:
    """A line typed at the terminal, or None at end of input; undecodable lines are refused
    and read again."""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return None
        except BrokenPipeError as exc:  # the prompt goes to stdout
            raise OutputClosed from exc
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            note(f"{PROG}: that line is not valid UTF-8 text; type it again")
            continue
        return line


# -- readline and its history file -------------------------------------------------------------


def _start_history() -> Callable[[], None]:
    """Turn on readline (line editing, Up/Down) for a terminal and load the history file;
    return what saves the history at the end. Any failure leaves plain ``input()``."""
    try:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return lambda: None
        import readline
    except (ImportError, AttributeError, ValueError, OSError):
        return lambda: None
    from serapeum.llama_cpp.cache_dir import cache_dir

    path = cache_dir() / HISTORY_FILE
    with contextlib.suppress(OSError, ValueError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        # Tab inserts a tab instead of completing (nothing to complete in a chat)
        readline.parse_and_bind("tab: tab-insert")
    start = readline.get_current_history_length()

    def save() -> None:
        added = readline.get_current_history_length() - start
        with contextlib.suppress(OSError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and added >= 0:
                readline.append_history_file(added, path)
                _trim_history(path)
            else:
                readline.write_history_file(path)

    return save


def _trim_history(path: Path) -> None:
    """Keep the file to the last ``HISTORY_LENGTH`` lines (appends from many chats add up)."""
    lines = path.read_bytes().splitlines(keepends=True)
    if len(lines) > HISTORY_LENGTH:
        path.write_bytes(b"".join(lines[-HISTORY_LENGTH:]))
