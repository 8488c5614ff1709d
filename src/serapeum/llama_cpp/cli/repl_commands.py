"""The chat REPL's slash commands (``/help``, ``/set``, ``/save`` ...), answered locally.

A line that starts with ``/`` is a command and never reaches the model (``//`` sends a
literal ``/``). Each command gets the conversation's state and the rest of the line; what it
shows goes to stdout (``/help``, ``/history``, ``/set`` alone), what it reports to stderr.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message
from serapeum.llama_cpp.cli.output import PROG, note, one_line, out

if TYPE_CHECKING:
    from serapeum.llama_cpp.cli.conversation_file import SavedConversation

__all__ = ["COMMANDS", "ChatState", "Command", "run_command"]


COMMAND_LINE = "command line"


@define
class ChatState:
    """What the REPL keeps between lines: the turns, the system prompt, the options.

    ``options`` are the library's keywords (``max_new_tokens``); ``command_line`` and
    ``command_line_system`` what the chat was started with, and ``started`` each option's
    starting value with where it came from (the command line or a conversation file), so
    ``/unset`` goes back to it and ``/set`` can say where a value comes from.
    """

    messages: list[Message] = field(factory=list)
    system: str | None = None
    options: dict[str, Any] = field(factory=dict)
    model: str = ""
    command_line: dict[str, Any] = field(factory=dict)
    command_line_system: str | None = None
    started: dict[str, tuple[Any, str]] = field(factory=dict)

    @classmethod
    def from_command_line(
        cls, options: dict[str, Any], system: str | None, model: str = ""
    ) -> ChatState:
        """The state of a new chat started with these options and system prompt."""
        state = cls(model=model, command_line=dict(options), command_line_system=system)
        state.begin()
        return state

    def begin(self, saved: SavedConversation | None = None, source: str = "") -> None:
        """Start over from the command line and, when given, a saved conversation (read
        from ``source``): its turns, its system prompt and options unless the command line
        gave them (``chat --continue FILE`` and ``/load FILE`` alike)."""
        self.started = {
            key: (value, source) for key, value in (saved.options if saved else {}).items()
        }
        self.started.update({key: (v, COMMAND_LINE) for key, v in self.command_line.items()})
        self.options = {key: value for key, (value, _) in self.started.items()}
        self.messages = list(saved.messages) if saved else []
        self.system = self.command_line_system
        if self.system is None and saved is not None:
            self.system = saved.system

    def add_turn(self, question: str, answer: str, *, stopped: bool) -> bool:
        """Keep ``question`` and its ``answer``; False, keeping neither, for an answer
        stopped before any text: an empty assistant turn would be sent to the model and
        saved, and dropping the answer alone would leave two user turns in a row."""
        if stopped and not answer.strip():
            return False
        self.messages += [Message.user(question), Message.assistant(answer.strip())]
        return True

    def to_send(self, question: str | None = None) -> list[Message]:
        """The messages for the model: the system prompt first, then the turns."""
        start = [Message.system(self.system)] if self.system else []
        end = [Message.user(question)] if question is not None else []
        return [*start, *self.messages, *end]


@frozen
class Command:
    """One slash command: its names, the argument it takes, what it does."""

    names: tuple[str, ...]
    usage: str
    help: str
    run: Callable[[ChatState, str], bool]  # True: leave the REPL


def _help(state: ChatState, argument: str) -> bool:
    out("Type a message and press Enter; the answer streams below. Commands:")
    for command in COMMANDS:
        shown = " ".join(["/" + command.names[0], command.usage]).strip()
        also = ", ".join("/" + name for name in command.names[1:])
        also = f" (also {also})" if also else ""
        out(f"  {shown:<19} {command.help}{also}")
    out(
        "Keys: Up/Down recall earlier lines, Left/Right and Ctrl-A/Ctrl-E edit the line;\n"
        "  Ctrl-C stops an answer (the conversation and the answer so far stay) or clears\n"
        "  the line; Ctrl-D on an empty line leaves.\n"
        'Several lines: type """ alone on a line, the lines, then """ again; or end a line\n'
        "  with \\ to continue it. A line starting with // sends a literal /."
    )
    return False


def _leave(state: ChatState, argument: str) -> bool:
    return True


def _reset(state: ChatState, argument: str) -> bool:
    count = len(state.messages)
    state.messages.clear()
    kept = " (the system prompt and options stay)" if state.system or state.options else ""
    note(f"Cleared the conversation: {count} messages forgotten{kept}.")
    return False


def _system(state: ChatState, argument: str) -> bool:
    if not argument:
        if state.system is None:
            note("No system prompt is set (the model's chat template may add its own).")
        else:
            out(state.system)
        return False
    if argument == "--clear":
        removed = state.system is not None
        state.system = None
        note("Removed the system prompt." if removed else "No system prompt was set.")
        return False
    replaced = state.system is not None
    state.system = argument
    note(f"System prompt {'replaced' if replaced else 'set'}; it applies from the next answer.")
    return False


def _option_keys() -> dict[str, str]:
    """The library keyword -> the key ``/set`` takes (``max_new_tokens`` -> ``max_tokens``)."""
    from serapeum.llama_cpp.cli.options import GENERATION_OPTIONS

    return {spec.keyword: spec.key for spec in GENERATION_OPTIONS.values()}


def _origin(state: ChatState, keyword: str) -> str:
    """Where the option's current value comes from, in words."""
    if keyword not in state.started:
        return "set in this chat"
    value, source = state.started[keyword]
    if state.options.get(keyword) == value:
        return f"from the {source}" if source == COMMAND_LINE else f"from {source}"
    return f"set in this chat; /unset gives back {value!r}"


def _show_option(state: ChatState, keyword: str) -> None:
    key = _option_keys().get(keyword, keyword)
    if keyword in state.options:
        out(f"  {key} = {state.options[keyword]!r}  ({_origin(state, keyword)})")
    else:
        out(f"  {key} is not set: the model's default applies")


def _show_options(state: ChatState) -> None:
    if not state.options:
        note("No options set for this chat (the model's defaults apply); /set KEY VALUE sets one.")
        return
    for keyword in state.options:
        _show_option(state, keyword)
    note("Options not shown have the model's defaults; /set KEY VALUE changes one.")


def _set(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.options import option_spec, parse_option

    if not argument:
        _show_options(state)
        return False
    key, _, value = argument.partition(" ")
    value = value.strip()
    if not value:  # /set KEY: show that one
        _show_option(state, option_spec(key).keyword)
        return False
    keyword, parsed = parse_option(key, value)
    if option_spec(key).repeatable and isinstance(state.options.get(keyword), list):
        parsed = [*state.options[keyword], *parsed]  # /set stop X adds a stop sequence
    state.options[keyword] = parsed
    note(f"{_option_keys().get(keyword, keyword)} = {parsed!r}")
    return False


def _unset(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.options import option_spec

    if not argument:
        raise ConfigurationError("/unset needs the option's KEY, e.g. /unset temperature")
    spec = option_spec(argument)
    keyword, key = spec.keyword, spec.key
    if keyword in state.started:  # back to what the chat started with, not the model's
        value, _ = state.started[keyword]
        state.options[keyword] = value
        note(f"{key} = {value!r} again ({_origin(state, keyword)}).")
    elif state.options.pop(keyword, _MISSING) is _MISSING:
        note(f"{key} was not set (/set shows the options set).")
    else:
        note(f"Unset {key}: the model's default applies.")
    return False


_MISSING = object()


def _save(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.conversation_file import save_conversation

    if not argument:
        raise ConfigurationError("/save needs a FILE, e.g. /save chat.json")
    saved = save_conversation(
        Path(argument),
        state.messages,
        system=state.system,
        options=state.options,
        model=state.model or None,
    )
    skipped = f" (left out options JSON cannot hold: {', '.join(saved.skipped_options)})"
    note(
        f"Saved {len(saved.messages)} messages to {argument}"
        f"{skipped if saved.skipped_options else ''}; "
        f"continue with: {PROG} chat --continue {shlex.quote(argument)}"
    )
    return False


def _load(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.conversation_file import load_conversation

    if not argument:
        raise ConfigurationError("/load needs a FILE saved with /save")
    loaded = load_conversation(Path(argument))
    state.begin(loaded, argument)
    kept = (
        " (the command line's system prompt and options win)"
        if (state.command_line or state.command_line_system is not None)
        else ""
    )
    note(f"Loaded {len(loaded.messages)} messages from {argument}{kept}; /history shows them.")
    return False


def _history(state: ChatState, argument: str) -> bool:
    if not state.messages and state.system is None:
        note("The conversation is empty.")
        return False
    shown = state.to_send()
    for message in shown:
        lines = message.content.split("\n")
        out(f"{message.role.value}: {lines[0]}")
        for line in lines[1:]:
            out(f"    {line}")
    return False


COMMANDS: tuple[Command, ...] = (
    Command(("help", "?"), "", "show this help", _help),
    Command(("exit", "quit", "bye"), "", "leave the chat, as Ctrl-D does", _leave),
    Command(("reset", "clear"), "", "forget the conversation and start over", _reset),
    Command(
        ("system",),
        "[TEXT]",
        "show or set the system prompt (/system --clear removes it)",
        _system,
    ),
    Command(
        ("set",),
        "[KEY [VALUE]]",
        "show the options and where each comes from, or set one",
        _set,
    ),
    Command(
        ("unset",),
        "KEY",
        "back to the starting value (or the model's default)",
        _unset,
    ),
    Command(("save",), "FILE", "save the conversation as JSON (continue: chat --continue)", _save),
    Command(("load",), "FILE", "replace the conversation with one saved by /save", _load),
    Command(("history",), "", "show the conversation so far", _history),
)
_BY_NAME = {name: command for command in COMMANDS for name in command.names}


def run_command(state: ChatState, line: str) -> bool:
    """Answer the command ``line`` (it starts with ``/``); True when the user leaves.

    A bad argument or a file that cannot be read or written is reported in one line and
    changes nothing.
    """
    name, _, argument = line.strip().removeprefix("/").partition(" ")
    command = _BY_NAME.get(name.lower())
    if command is None:
        _unknown(name)
        return False
    try:
        return command.run(state, argument.strip())
    except ConfigurationError as error:
        note(f"{PROG}: {one_line(str(error))}")
        return False


def _unknown(name: str) -> None:
    close = difflib.get_close_matches(name.lower(), list(_BY_NAME), n=1, cutoff=0.5)
    hint = f" Did you mean /{close[0]}?" if close else ""
    names = " ".join("/" + command.names[0] for command in COMMANDS)
    note(
        f"Unknown command /{one_line(name)}.{hint} Commands: {names} "
        "(a line starting with // sends a literal /)."
    )
