"""The interactive chat (``serapeum-llama-cpp chat`` in a terminal), driven in a real
pseudo-terminal: readline editing, slash commands, Ctrl-C and Ctrl-D, saving and continuing.

Each test runs the real CLI as a child whose controlling terminal is the pty (``pty.fork``),
so ``\\x03`` typed on the terminal sends it a real SIGINT, as a person's Ctrl-C does. The
timeouts are hang guards, never speed limits.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import time
from pathlib import Path

import pytest

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message
from serapeum.llama_cpp.cli.conversation_file import load_conversation, save_conversation

HANG_GUARD = 120.0  # seconds: only so that a hang fails the test instead of stalling the run
TINY = ("--formatter", "llama2", "--temperature", "0", "--max-tokens", "8")
LONG = ("--formatter", "llama2", "--max-tokens", "4000")  # ~4000 tokens: seconds to write
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """The CLI running in a pseudo-terminal; ``expect`` reads until a text has appeared."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "serapeum.llama_cpp", *args]
        full_env = {**os.environ, "TERM": "xterm", "LC_ALL": "C.UTF-8", **env}
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal
            try:
                os.execve(sys.executable, command, full_env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = b""
        self.status: int | None = None

    @property
    def text(self) -> str:
        """What the terminal showed, without escape sequences and carriage returns."""
        return ANSI.sub(b"", self.seen).decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child has closed the terminal
            data = b""
        self.seen += data
        return bool(data)

    def expect(self, marker: str, count: int = 1) -> None:
        """Read until ``marker`` has been shown ``count`` times in all (escapes removed)."""
        deadline = time.monotonic() + HANG_GUARD
        while self.text.count(marker) < count:
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{self.text}"
            assert self._read(0.5), f"the chat ended before {marker!r}:\n{self.text}"

    def prompts(self) -> int:
        return self.text.count("\n> ") + self.text.startswith("> ")

    def expect_prompts(self, count: int) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while self.prompts() < count:
            assert time.monotonic() < deadline, f"no prompt {count} in:\n{self.text}"
            assert self._read(0.5), f"the chat ended before prompt {count}:\n{self.text}"

    def send(self, data: str | bytes) -> None:
        os.write(self.fd, data.encode() if isinstance(data, str) else data)

    def line(self, text: str) -> None:
        """Type ``text`` and Enter, then wait for the next prompt."""
        count = self.prompts()
        self.send(text + "\r")
        self.expect_prompts(count + 1)

    def wait(self) -> int:
        deadline = time.monotonic() + HANG_GUARD
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                while self._read(0.1) and self.seen:  # what is left to read
                    if not select.select([self.fd], [], [], 0)[0]:
                        break
                return self.status
            assert time.monotonic() < deadline, self.text
            self._read(0.2)

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A cache of the test's own, so the readline history file is the test's."""
    return {"SERAPEUM_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def chat(tiny_model_path: Path, env: dict[str, str]):
    """Start ``chat`` on the tiny model with extra arguments; close it after the test."""
    started: list[Terminal] = []

    def start(*args: str, options: tuple[str, ...] = TINY) -> Terminal:
        terminal = Terminal("chat", "-m", str(tiny_model_path), *options, *args, env=env)
        started.append(terminal)
        terminal.expect("Chatting with")
        terminal.expect_prompts(1)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def _history(terminal: Terminal) -> str:
    """The conversation as ``/history`` shows it (the text after the command's echo)."""
    before = len(terminal.text)
    terminal.line("/history")
    return terminal.text[before:]


# -- commands ----------------------------------------------------------------------------------


def test_help_and_a_mistyped_command_are_answered_locally(chat) -> None:
    terminal = chat()
    terminal.line("/help")
    for command in ("/help", "/exit", "/reset", "/system", "/set", "/unset", "/save", "/load"):
        assert command in terminal.text
    assert "Ctrl-C" in terminal.text and '"""' in terminal.text
    terminal.line("/hlep")
    assert "Unknown command /hlep. Did you mean /help?" in terminal.text
    assert "user:" not in _history(terminal)  # nothing was sent to the model
    assert "The conversation is empty." in terminal.text
    terminal.send("/exit\r")
    assert terminal.wait() == 0


def test_reset_says_it_cleared_the_conversation(chat) -> None:
    terminal = chat()
    terminal.line("Hello")
    assert "user: Hello" in _history(terminal)
    terminal.line("/reset")
    assert "Cleared the conversation: 2 messages forgotten" in terminal.text
    assert "The conversation is empty." in _history(terminal)


def test_system_sets_replaces_and_shows_the_system_prompt(chat) -> None:
    terminal = chat("-s", "Be brief.")
    terminal.line("/system")
    assert "Be brief." in terminal.text
    terminal.line("/system Answer in French.")
    assert "System prompt replaced" in terminal.text
    terminal.line("Hello")
    shown = _history(terminal)
    assert "system: Answer in French." in shown and "Be brief." not in shown
    assert "user: Hello" in shown


def test_set_temperature_zero_gives_the_deterministic_answer(chat, tiny_model_path: Path) -> None:
    from serapeum.llama_cpp import LlamaCPP

    expected = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
    want = expected.chat([Message.user("Hi there")], max_new_tokens=8).message.content.strip()
    terminal = chat(options=("--formatter", "llama2", "--max-tokens", "8"))
    terminal.line("/set temperature 0")
    assert "temperature = 0.0" in terminal.text
    terminal.line("/set temperature warm")
    assert "must be a number from 0.0 to 1.0" in terminal.text
    terminal.line("/set")
    assert "temperature = 0.0" in terminal.text.split("/set\n")[-1]
    terminal.line("Hi there")
    assert "assistant: " + "\n    ".join(want.split("\n")) in _history(terminal)
    terminal.line("/unset temperature")
    assert "Unset temperature" in terminal.text


def test_a_library_error_is_one_line_and_the_question_is_dropped(chat) -> None:
    terminal = chat("--ctx", "64")
    terminal.line("hello " * 80)
    assert "error:" in terminal.text and "context window" in terminal.text
    assert "Traceback" not in terminal.text
    assert "The conversation is empty." in _history(terminal)
    terminal.line("Hi")  # the chat goes on
    assert "user: Hi" in _history(terminal)


def test_unset_returns_to_the_value_the_chat_started_with(chat, tmp_path: Path) -> None:
    terminal = chat(options=("--formatter", "llama2", "--temperature", "0", "--max-tokens", "8"))
    terminal.line("/set temperature 0.5")
    terminal.line("/set top_k 5")
    terminal.line("/set")
    shown = terminal.text.split("/set\n")[-1]
    assert "temperature = 0.5  (set in this chat; /unset gives back 0.0)" in shown
    assert "max_tokens = 8  (from the command line)" in shown
    assert "top_k = 5  (set in this chat)" in shown
    terminal.line("/unset temperature")  # back to --temperature 0, not the model's 0.75
    assert "temperature = 0.0 again (from the command line)" in terminal.text
    terminal.line("/unset top_k")  # set only in the chat: the model's default
    assert "Unset top_k: the model's default applies." in terminal.text
    terminal.line("/set temperature")
    assert "temperature = 0.0  (from the command line)" in terminal.text
    terminal.line("/set top_p")
    assert "top_p is not set: the model's default applies" in terminal.text
    saved = tmp_path / "opts.json"
    saved.write_text(json.dumps({"messages": [], "options": {"top_k": 3, "temperature": 0.2}}))
    terminal.line(f"/load {saved}")  # as chat --continue: the command line's options win
    terminal.line("/set top_k 9")
    terminal.line("/unset top_k")
    assert f"top_k = 3 again (from {saved})" in terminal.text
    terminal.line("/set temperature")
    assert "temperature = 0.0  (from the command line)" in terminal.text.split("/load")[-1]


# -- input ---------------------------------------------------------------------------------------


def test_multi_line_blocks_and_backslash_continuations_are_one_message(chat) -> None:
    terminal = chat()
    terminal.send('"""\r')
    terminal.expect("... ")
    terminal.send("first line\r")
    terminal.expect("... ", 2)
    terminal.line('second line"""')
    terminal.send("one \\\r")
    terminal.expect("... ", 3)
    terminal.line("two")
    terminal.line("//literal slash")
    terminal.line('"""/help is a message in a block"""')
    shown = _history(terminal)
    assert "user: /help is a message in a block" in shown
    assert "user: first line\n    second line\n" in shown
    assert "user: one \n    two\n" in shown
    assert "user: /literal slash" in shown


def test_left_arrow_edits_the_line_instead_of_printing_escapes(chat) -> None:
    terminal = chat()
    terminal.send("helo")
    terminal.send("\x1b[D")  # left arrow
    terminal.line("l")
    assert "^[[D" not in terminal.text
    assert "user: hello" in _history(terminal)
    count = terminal.prompts()
    terminal.send("\x1b[A\x1b[A\r")  # Up twice: the line before /history, sent again
    terminal.expect_prompts(count + 1)
    assert _history(terminal).count("user: hello") == 2


def test_ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_leaves(chat, env: dict[str, str]) -> None:
    terminal = chat()
    # Each Ctrl-C comes after the echo and a pause, as a person's does: CPython's readline
    # loop sees a SIGINT that lands while it handles a key (microseconds after the echo)
    # only at the next key, a race no person hits but a test sending keys at once does.
    terminal.send("never sent")
    terminal.expect("never sent")
    time.sleep(0.5)
    terminal.send("\x03")
    terminal.expect_prompts(2)
    assert "(Ctrl-D or /exit to leave)" not in terminal.text
    terminal.send("again")
    terminal.expect("again")
    time.sleep(0.5)
    terminal.send("\x03")  # a second Ctrl-C in a row: how to leave
    terminal.expect("(Ctrl-D or /exit to leave)")
    terminal.expect_prompts(3)
    assert "The conversation is empty." in _history(terminal)
    terminal.send("\x04")
    assert terminal.wait() == 0
    history = Path(env["SERAPEUM_CACHE_DIR"]) / "chat_history"
    assert "/history" in history.read_text()  # readline's history, kept for the next chat


def test_ctrl_c_stops_the_answer_only_and_the_chat_goes_on(chat) -> None:
    terminal = chat(options=LONG)
    terminal.send("Tell me a long story\r")
    terminal.expect("Tell me a long story\n")
    before = len(terminal.seen)
    while len(terminal.seen) < before + 40:  # some of the answer is on the screen
        assert terminal._read(HANG_GUARD), terminal.text
    terminal.send("\x03")
    terminal.expect("[stopped]")
    terminal.expect_prompts(2)
    shown = _history(terminal)
    assert "user: Tell me a long story" in shown
    partial = shown.split("assistant: ", 1)[1].split("\n")[0]
    assert partial.strip()  # the partial answer was kept
    terminal.line("/set max_tokens 4")
    terminal.line("And another")  # the model was freed: it answers the next question
    assert "user: And another" in _history(terminal)
    terminal.send("/exit\r")
    assert terminal.wait() == 0


def test_ctrl_c_before_the_first_token_keeps_neither_question_nor_answer(chat) -> None:
    # A long system prompt keeps the tiny model reading for seconds before its first token;
    # Ctrl-C is sent once the question's Enter has been echoed. Should a very fast machine
    # answer before the Ctrl-C lands, the test skips: the state logic itself is checked
    # without timing by test_an_answer_stopped_before_any_text_drops_the_question.
    terminal = chat("-s", "hello " * 600, options=("--formatter", "llama2", "--ctx", "4096"))
    terminal.send("Hi\r")
    terminal.expect("Hi\n")
    time.sleep(0.3)  # the REPL is past reading the line: the model is reading the prompt
    terminal.send("\x03")
    terminal.expect("[stopped")
    terminal.expect_prompts(2)
    if "[stopped before the answer began" not in terminal.text:
        pytest.skip("the model answered before Ctrl-C landed; state logic tested directly")
    assert "[stopped before the answer began; the question was not kept]" in terminal.text
    shown = _history(terminal)
    assert "user: Hi" not in shown and "assistant:" not in shown
    terminal.line("/set max_tokens 4")
    terminal.line("Hello")  # the chat goes on, turns alternating
    shown = _history(terminal)
    assert shown.count("user:") == 1 and "user: Hello" in shown and "assistant:" in shown


def test_an_answer_stopped_before_any_text_drops_the_question() -> None:
    """What the REPL keeps after Ctrl-C, without racing a real Ctrl-C against the model."""
    from serapeum.llama_cpp.cli.repl_commands import ChatState

    state = ChatState.from_command_line({}, None)
    assert state.add_turn("q1", "  ", stopped=True) is False
    assert state.messages == []
    assert state.add_turn("q2", "partial ", stopped=True) is True
    assert state.add_turn("q3", "", stopped=False) is True  # a finished, empty answer stays
    assert [m.content for m in state.messages] == ["q2", "partial", "q3", ""]


# -- saving and continuing --------------------------------------------------------------------


def test_save_then_continue_restores_the_conversation(
    chat, tmp_path: Path, tiny_model_path: Path, env: dict[str, str]
) -> None:
    saved = tmp_path / "chat.json"
    terminal = chat("-s", "Be brief.")
    terminal.line("/set top_k 5")
    terminal.line("Hello")
    terminal.line(f"/save {saved}")
    assert f"Saved 2 messages to {saved}" in terminal.text
    document = json.loads(saved.read_text())
    assert document["system"] == "Be brief."
    # the command line's names, as /set and --max-tokens spell them
    assert document["options"] == {"temperature": 0.0, "max_tokens": 8, "top_k": 5}
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"]
    assert document["messages"][0] == {"role": "user", "content": "Hello"}
    terminal.send("\x04")
    assert terminal.wait() == 0

    again = chat("--continue", str(saved))
    assert "Continuing" in again.text and "2 messages" in again.text
    again.line("/set")
    assert "top_k = 5" in again.text
    again.line("Again")
    shown = _history(again)
    assert "system: Be brief." in shown
    assert shown.index("user: Hello") < shown.index("assistant:") < shown.index("user: Again")
    again.line("/reset")
    again.line(f"/load {saved}")
    assert "Loaded 2 messages" in again.text
    assert "user: Hello" in _history(again)
    again.line(f"/load {tmp_path / 'missing.json'}")
    assert "cannot read" in again.text  # reported; the chat goes on
    again.send("/quit\r")
    assert again.wait() == 0


def test_continue_reads_files_with_the_library_option_names(chat, tmp_path: Path) -> None:
    old = tmp_path / "old.json"  # as /save wrote them before: the library's keywords
    old.write_text(json.dumps({"messages": [], "options": {"max_new_tokens": 3, "top_k": 2}}))
    terminal = chat("--continue", str(old), options=("--formatter", "llama2"))
    terminal.line("/set")
    shown = terminal.text.split("/set\n")[-1]
    assert f"max_tokens = 3  (from {old})" in shown and "top_k = 2" in shown
    assert "max_new_tokens" not in shown
    terminal.line(f"/save {old}")
    assert json.loads(old.read_text())["options"] == {"max_tokens": 3, "top_k": 2}


def test_conversation_files_round_trip_and_refuse_what_is_not_a_chat(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    messages = [Message.user("café ✓"), Message.assistant("ok")]
    written = save_conversation(
        path, messages, system="S", options={"temperature": 0.1, "odd": object()}, model="m"
    )
    assert written.skipped_options == ("odd",)
    loaded = load_conversation(path)
    assert loaded.messages == tuple(messages) and loaded.system == "S"
    assert loaded.options == {"temperature": 0.1}
    save_conversation(path, messages, system=None, options={"max_new_tokens": 4, "stop": ["\n"]})
    assert json.loads(path.read_text())["options"] == {"max_tokens": 4, "stop": ["\n"]}
    assert load_conversation(path).options == {"max_new_tokens": 4, "stop": ["\n"]}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    openai_style = tmp_path / "openai.json"
    openai_style.write_text(
        json.dumps([{"role": "system", "content": "X"}, {"role": "user", "content": "Y"}])
    )
    plain = load_conversation(openai_style)
    assert plain.system == "X" and plain.messages == (Message.user("Y"),)
    for bad, problem in (
        ("{}", "not a saved chat"),
        ("[1]", "messages[0] must be an object"),
        ('[{"role": "robot", "content": "x"}]', "unknown message role"),
        ("{not json", "not JSON"),
        ('{"messages": [], "options": {"temprature": 1}}', "did you mean temperature?"),
        ('{"messages": [], "options": {"top_k": "many"}}', 'option "top_k" must be an integer'),
    ):
        openai_style.write_text(bad)
        with pytest.raises(ConfigurationError, match=re.escape(problem)):
            load_conversation(openai_style)
    with pytest.raises(ConfigurationError, match="cannot save"):
        save_conversation(tmp_path / "no" / "dir.json", messages, system=None, options={})


# -- the real chat model -------------------------------------------------------------------------


@pytest.mark.e2e_chat
def test_the_default_chat_model_answers_paris_in_the_repl(env: dict[str, str]) -> None:
    from serapeum.llama_cpp.demo import chat_model_path

    terminal = Terminal("chat", "-m", str(chat_model_path()), "--max-tokens", "32", env=env)
    try:
        terminal.expect("Chatting with")
        terminal.expect_prompts(1)
        terminal.line("/set temperature 0")
        terminal.line("What is the capital of France? Answer with one word.")
        answer = _history(terminal).split("assistant: ", 1)[1]
        assert "Paris" in answer, terminal.text
        terminal.send("\x04")
        assert terminal.wait() == 0
    finally:
        terminal.close()
