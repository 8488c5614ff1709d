"""The chat REPL's slash commands (``/help``, ``/set``, ``/save`` ...), answered locally.

A line that starts with ``/`` is a command and never reaches the model (``//`` sends a
literal ``/``). Each command gets the conversation's state and the rest of the line; what it
shows goes to stdout (``/help``, ``/history``, ``/set`` alone), what it reports to stderr.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message
from serapeum.llama_cpp.cli.output import PROG, note, one_line, out

__all__ = ["COMMANDS", "ChatState", "Command", "run_command"]


@define
class ChatState:
    """What the REPL keeps between lines: the turns, the system prompt, the options."""

    messages: list[Message] = field(factory=list)
    system: str | None = None
    options: dict[str, Any] = field(factory=dict)
    model: str = ""

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
        out(f"  {shown:<18} {command.help}{also}")
    out(
        "Keys: Up/Down recall earlier lines, Left/Right and Ctrl-A/Ctrl-E edit the line;\n"
        "  Ctrl-C stops an answer (the conversation stays) or clears the line; Ctrl-D leaves.\n"
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
        state.system = None
        note("Removed the system prompt.")
        return False
    replaced = state.system is not None
    state.system = argument
    note(f"System prompt {'replaced' if replaced else 'set'}; it applies from the next answer.")
    return False


def _option_keys() -> dict[str, str]:
    """The library keyword -> the key ``/set`` takes (``max_new_tokens`` -> ``max_tokens``)."""
    from serapeum.llama_cpp.cli.options import GENERATION_OPTIONS

    return {spec.keyword: spec.key for spec in GENERATION_OPTIONS.values()}


def _show_options(state: ChatState) -> None:
    if not state.options:
        note("No options set for this chat (the model's defaults apply); /set KEY VALUE sets one.")
        return
    keys = _option_keys()
    for keyword, value in state.options.items():
        out(f"  {keys.get(keyword, keyword)} = {value!r}")


def _set(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.options import GENERATION_OPTIONS, option_spec, parse_option

    if not argument:
        _show_options(state)
        return False
    key, _, value = argument.partition(" ")
    value = value.strip()
    if not value:
        keys = ", ".join(GENERATION_OPTIONS)
        raise ConfigurationError(f"/set needs KEY VALUE, e.g. /set temperature 0.2; keys: {keys}")
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
    keyword = option_spec(argument).keyword
    if state.options.pop(keyword, None) is None:
        note(f"{argument} was not set (/set shows the options set).")
    else:
        note(f"Unset {argument}: the model's default applies.")
    return False


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
        f"continue with: {PROG} chat --continue {argument}"
    )
    return False


def _load(state: ChatState, argument: str) -> bool:
    from serapeum.llama_cpp.cli.conversation_file import load_conversation

    if not argument:
        raise ConfigurationError("/load needs a FILE saved with /save")
    loaded = load_conversation(Path(argument))
    state.messages = list(loaded.messages)
    state.system = loaded.system
    state.options = dict(loaded.options)
    note(f"Loaded {len(loaded.messages)} messages from {argument}; /history shows them.")
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
        "show the system prompt, or set it to TEXT (--clear removes it)",
        _system,
    ),
    Command(("set",), "[KEY VALUE]", "show the options, or set one (/set temperature 0)", _set),
    Command(("unset",), "KEY", "go back to the default for an option", _unset),
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
