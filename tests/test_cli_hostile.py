"""The command line under hostile input: one line and exit 2 for the user's errors, no traceback.

Every case runs the real command in a subprocess (``python -m serapeum.llama_cpp``), feeding it
bytes the way a shell would: invalid UTF-8 on stdin and in argv, hostile model files, closed
pipes, terminals that cannot encode the answer. Timeouts are hang guards, never speed limits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf

PROG = "serapeum-llama-cpp"
COMMAND = [sys.executable, "-m", "serapeum.llama_cpp"]
TINY = ("--formatter", "llama2", "--temperature", "0", "--max-tokens", "6")
HANG_GUARD = 120  # seconds; only there so a hang fails one test instead of the run


def _run(
    *args: str | bytes,
    data: bytes | None = None,
    env: dict[str, str] | None = None,
    **popen: object,
) -> subprocess.CompletedProcess[bytes]:
    """Run the command with ``data`` on stdin; ``popen`` may redirect stdin, stdout, stderr."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    try:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [*COMMAND, *args],
            input=data,
            env={**os.environ, "LC_ALL": "C.UTF-8", **(env or {})},
            timeout=HANG_GUARD,
            **popen,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the command hung: {args!r}")


def _assert_one_line_error(
    result: subprocess.CompletedProcess[bytes], status: int, *fragments: str
) -> str:
    """The command failed with ``status`` and said so in exactly one line, no traceback."""
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert result.returncode == status, (result.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROG}: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    assert "\x1b" not in lines[0]
    return lines[0]


# -- standard input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe", "UTF-16"),
        (b"\xff\xfeh\x00i\x00", "UTF-16"),
        (b"caf\xe9 au lait", "not valid UTF-8 text (byte 0xe9 at offset 3)"),
        (b"hi \xc3\x28", "not valid UTF-8"),
        (b"\xed\xa0\x80 surrogate", "not valid UTF-8"),  # a UTF-8-encoded lone surrogate
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary data"),
        (bytes(range(256)), "not valid UTF-8"),
    ],
)
@pytest.mark.parametrize("command", ["complete", "chat"])
def test_binary_or_invalid_utf8_on_stdin_is_one_line_and_exit_2(
    tiny_model_path: Path, command: str, data: bytes, says: str
) -> None:
    result = _run(command, "-m", str(tiny_model_path), *TINY, data=data)
    _assert_one_line_error(result, 2, "standard input", says)


def test_stdin_over_the_size_limit_is_refused(tiny_model_path: Path) -> None:
    result = _run("complete", "-m", str(tiny_model_path), *TINY, data=b"a" * (17 * 2**20))
    _assert_one_line_error(result, 2, "standard input is over 16 MiB")


def test_closed_stdin_asks_for_a_prompt(tiny_model_path: Path) -> None:
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', *COMMAND, "complete", "-m", str(tiny_model_path)],
        capture_output=True,
        timeout=HANG_GUARD,
    )
    _assert_one_line_error(result, 2, "give a PROMPT")


def test_a_utf8_bom_and_valid_text_on_stdin_still_work(tiny_model_path: Path) -> None:
    plain = _run("complete", "-m", str(tiny_model_path), *TINY, data="Hello ✓".encode())
    with_bom = _run("complete", "-m", str(tiny_model_path), *TINY, data="\ufeffHello ✓".encode())
    assert plain.returncode == 0, plain.stderr
    assert with_bom.stdout == plain.stdout


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [b"\xff", b"caf\xe9", b"ok \xed\xa0\x80", b"\xc3"],
    ids=["ff", "latin1", "surr", "cut"],
)
def test_invalid_utf8_in_argv_is_one_line_and_exit_2(tiny_model_path: Path, prompt: bytes) -> None:
    result = _run("complete", "-m", str(tiny_model_path), *TINY, prompt)
    _assert_one_line_error(result, 2, "not valid UTF-8")


def test_invalid_utf8_in_an_option_is_refused_too(tiny_model_path: Path) -> None:
    result = _run("complete", "-m", str(tiny_model_path), *TINY, "-s", b"sys\xff", "hi")
    _assert_one_line_error(result, 2, "'sys\\xff' is not valid UTF-8")


def test_lone_surrogates_given_to_main_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The same check in-process: what Python's surrogateescape decoding of argv produces."""
    from serapeum.llama_cpp.cli import main

    for prompt in ("\udcff", "a\ud800b"):
        assert main(["complete", prompt]) == 2
        assert "not valid UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ("complete", "--temperature", "warm", "hi"),
        ("complete", "--max-tokens", "1e3", "hi"),
        ("no-such-command",),
        (),
        ("download",),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(args: Sequence[str]) -> None:
    _assert_one_line_error(_run(*args), 2, "--help")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--max-tokens", "0"),
        ("--max-tokens", "-5"),
        ("--ctx", "-1"),
    ],
)
def test_out_of_range_options_are_one_line_and_exit_2(
    tiny_model_path: Path, option: str, value: str
) -> None:
    result = _run("complete", "-m", str(tiny_model_path), *TINY, option, value, "hi")
    _assert_one_line_error(result, 2)


def test_debug_is_accepted_after_the_command(tiny_model_path: Path) -> None:
    result = _run("complete", "--debug", "-m", "/no/such/model.gguf", "hi")
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"{PROG}: error: ")
    download = _run("download", "/no/such/model.gguf", "--debug")
    assert download.returncode == 2 and "Traceback" in download.stderr.decode()
    listing = _run("formatters", "--debug")
    assert listing.returncode == 0, listing.stderr


def test_an_error_message_with_newlines_and_escapes_stays_one_harmless_line() -> None:
    result = _run("complete", "-m", "/no/such/\n\x1b[31mred\x1b[0m.gguf", "hi")
    _assert_one_line_error(result, 2)


# -- hostile model files -----------------------------------------------------------------------


def _garbage_gguf(path: Path) -> None:
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)


def _html_page(path: Path) -> None:
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path)


def _truncated(tiny: Path) -> object:
    def make(path: Path) -> None:
        data = tiny.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return make


def _byte_set(tiny: Path, offset: int, value: int) -> object:
    """The tiny model with one header byte changed (226 is inside ``llama.block_count``)."""

    def make(path: Path) -> None:
        data = bytearray(tiny.read_bytes())
        data[offset] = value
        path.write_bytes(bytes(data))

    return make


def _block_count(tiny: Path, value: int) -> object:
    """The tiny model with ``llama.block_count`` rewritten (what gguf-set-metadata does)."""

    def make(path: Path) -> None:
        import gguf

        shutil.copyfile(tiny, path)
        reader = gguf.GGUFReader(path, "r+")
        field = reader.fields["llama.block_count"]
        field.parts[field.data[0]][0] = value
        del reader

    return make


HOSTILE_FILES = {
    "gguf-magic-then-garbage": _garbage_gguf,
    "html-page": _html_page,
    "empty": _empty,
    "fifo": _fifo,
    "directory": _directory,
    "symlink-loop": _symlink_loop,
}
CRAFTED = ("truncated-half", "block-count-0", "block-count-1000", "byte-226-ff", "byte-16-ff")


@pytest.fixture
def hostile_model(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_path: Path) -> Path:
    name = request.param
    makers = {
        **HOSTILE_FILES,
        "truncated-half": _truncated(tiny_model_path),
        "block-count-0": _block_count(tiny_model_path, 0),
        "block-count-1000": _block_count(tiny_model_path, 1000),
        "byte-226-ff": _byte_set(tiny_model_path, 226, 0xFF),
        "byte-16-ff": _byte_set(tiny_model_path, 16, 0xFF),
    }
    path = tmp_path / f"{name}.gguf"
    makers[name](path)  # type: ignore[operator]
    return path


@pytest.mark.parametrize("hostile_model", [*HOSTILE_FILES, *CRAFTED], indirect=True)
@pytest.mark.parametrize("command", ["complete", "download"])
def test_a_hostile_model_file_is_one_line_and_exit_2(
    hostile_model: Path, command: str, cache_root: Path
) -> None:
    if command == "complete":
        result = _run("complete", *TINY, "-m", str(hostile_model), "hi")
    else:
        result = _run("download", "-q", str(hostile_model))
    _assert_one_line_error(result, 2, hostile_model.name)


def test_a_checksum_mismatch_on_a_local_file_is_the_users_error(
    tiny_model_path: Path, cache_root: Path
) -> None:
    result = _run("download", "--sha256", "0" * 64, str(tiny_model_path))
    _assert_one_line_error(result, 2, "0" * 64)
    assert tiny_model_path.exists()


def test_a_checksum_mismatch_on_a_download_is_the_users_error(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/models/tiny.gguf", model_bytes)
    result = _run("download", "-q", "--sha256", "0" * 64, url)
    _assert_one_line_error(result, 2, "0" * 64)


# -- chat templates and schemas ----------------------------------------------------------------

ONE_MESSAGE_TEMPLATE = (
    "{% if messages|length > 1 %}{{ raise_exception('one message only, please') }}{% endif %}"
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
)


@pytest.fixture(scope="module")
def picky_template_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TinyModelSpec(chat_template=ONE_MESSAGE_TEMPLATE, name="picky-template")
    return build_tiny_gguf(tmp_path_factory.mktemp("picky") / "picky.gguf", spec)


@pytest.fixture(scope="module")
def broken_template_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TinyModelSpec(chat_template="{% for m in messages %}{{ m.content", name="broken")
    return build_tiny_gguf(tmp_path_factory.mktemp("broken") / "broken.gguf", spec)


def test_a_chat_template_that_refuses_the_conversation_is_exit_2(
    picky_template_model: Path,
) -> None:
    base = ("chat", "-m", str(picky_template_model), "--temperature", "0", "--max-tokens", "4")
    fine = _run(*base, data=b"Hi!")
    assert fine.returncode == 0, fine.stderr
    refused = _run(*base, "-s", "Be brief.", data=b"Hi!")
    _assert_one_line_error(refused, 2, "one message only, please")


def test_a_chat_template_that_does_not_compile_is_exit_2(broken_template_model: Path) -> None:
    result = _run("complete", "-m", str(broken_template_model), "--max-tokens", "4", "hi")
    _assert_one_line_error(result, 2, "template")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[" * 200_000, "nested too deeply"),
        (b'{"type": "string", "description": "caf\xe9"}', "not valid UTF-8"),
        (b"{not json", "not JSON"),
        (b"\x00\x01\x02", "binary data"),
    ],
)
def test_a_bad_schema_file_is_one_line(
    tiny_model_path: Path, tmp_path: Path, content: bytes, says: str
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_bytes(content)
    result = _run("complete", "-m", str(tiny_model_path), *TINY, "--json-schema", str(schema), "hi")
    _assert_one_line_error(result, 2, "--json-schema", says)


@pytest.mark.parametrize("special", ["/dev/zero", "directory", "missing"])
def test_a_schema_path_that_is_no_file_is_one_line(
    tiny_model_path: Path, tmp_path: Path, special: str
) -> None:
    path = {"/dev/zero": "/dev/zero", "directory": str(tmp_path), "missing": "/no/such.json"}
    result = _run(
        "complete", "-m", str(tiny_model_path), *TINY, "--json-schema", path[special], "hi"
    )
    _assert_one_line_error(result, 2, "--json-schema")


def test_a_schema_from_process_substitution_still_works(tiny_model_path: Path) -> None:
    """A FIFO named on the command line is read (``--json-schema <(jq ...)``)."""
    schema = json.dumps({"enum": ["red", "green", "blue"]})
    result = subprocess.run(
        [
            "bash",
            "-c",
            'exec "$0" "$@" --json-schema <(printf %s "$SCHEMA") hi',
            *COMMAND,
            "complete",
            "-m",
            str(tiny_model_path),
            "--formatter",
            "llama2",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
        ],
        capture_output=True,
        env={**os.environ, "SCHEMA": schema},
        timeout=HANG_GUARD,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) in {"red", "green", "blue"}


# -- output: closed pipes and narrow terminals --------------------------------------------------


LONG = ("--formatter", "llama2", "--temperature", "0", "--max-tokens", "3000", "--ctx", "4096")


def test_a_pipe_closed_after_one_byte_ends_quietly(tiny_model_path: Path) -> None:
    """``serapeum-llama-cpp complete ... | head -c 1``: exit 141, nothing on stderr."""
    process = subprocess.Popen(
        [*COMMAND, "complete", "-m", str(tiny_model_path), *LONG, "--raw", "Once upon a time"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.read(1)
        process.stdout.close()
        stderr = process.stderr.read().decode("utf-8", "replace")
        status = process.wait(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            process.kill()
    assert first, "the model wrote nothing"
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert status == 141, (status, stderr)


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is already gone: the first write fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    yield write_end
    os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [("--help",), ("complete", "--help"), ("plugins",), ("models",), ("formatters",)],
)
def test_listings_into_a_closed_pipe_end_quietly(
    args: Sequence[str], closed_pipe: int, cache_root: Path
) -> None:
    result = _run(*args, stdout=closed_pipe, stderr=subprocess.PIPE)
    assert result.stderr == b"" and result.returncode == 141, result.stderr


def test_an_answer_into_a_closed_pipe_ends_quietly(tiny_model_path: Path, closed_pipe: int) -> None:
    result = _run(
        "complete",
        "-m",
        str(tiny_model_path),
        *TINY,
        "hi",
        stdout=closed_pipe,
        stderr=subprocess.PIPE,
    )
    assert result.stderr == b"" and result.returncode == 141, result.stderr


def test_an_error_into_a_closed_stderr_keeps_its_status(closed_pipe: int) -> None:
    result = _run(
        "complete", "-m", "/no/such.gguf", "hi", stdout=subprocess.PIPE, stderr=closed_pipe
    )
    assert result.returncode == 2


def test_text_the_terminal_cannot_encode_is_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "caché-✓"
    for encoding in ("ascii", "latin-1"):
        result = _run(
            "models", env={"PYTHONIOENCODING": encoding, "SERAPEUM_CACHE_DIR": str(cache)}
        )
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        assert b"nothing cached in" in result.stdout and b"?" in result.stdout


def test_an_answer_the_terminal_cannot_encode_does_not_crash(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A schema forces non-ASCII model text; an ASCII or Latin-1 stdout gets ``?`` for it."""
    schema = tmp_path / "enum.json"
    schema.write_text(json.dumps({"enum": ["café ✓ 日本"]}), encoding="utf-8")
    args = ["complete", "-m", str(tiny_model_path), *TINY[:4], "--max-tokens", "40"]
    args += ["--json-schema", str(schema), "hi"]
    assert _run(*args).stdout.decode("utf-8") == '"café ✓ 日本"\n'
    for encoding, expected in (("ascii", b'"caf? ? ??"\n'), ("latin-1", b'"caf\xe9 ? ??"\n')):
        result = _run(*args, env={"PYTHONIOENCODING": encoding})
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        assert result.stdout == expected


# -- interrupts and bugs -----------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(tiny_model_path: Path) -> None:
    process = subprocess.Popen(
        [*COMMAND, "complete", "-m", str(tiny_model_path), *LONG, "--raw", "Once upon a time"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.read(1), "the model wrote nothing"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            process.kill()
    text = stderr.decode("utf-8", "replace")
    assert process.returncode == 130 and "Traceback" not in text, text
    assert text.strip().splitlines() == [f"{PROG}: interrupted"]


def test_an_unexpected_exception_is_a_bug_and_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mocked: a bug cannot be provoked for real; a non-serapeum exception must propagate."""
    from serapeum.llama_cpp import cli
    from serapeum.llama_cpp.cli import commands

    def broken(_args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "formatters", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["formatters"])


def test_an_undecodable_line_typed_in_the_chat_does_not_end_it(
    tiny_model_path: Path,
) -> None:
    import pty
    import select
    import time

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*COMMAND, "chat", "-m", str(tiny_model_path), *TINY],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    os.close(follower)
    seen = b""

    def wait_for(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + HANG_GUARD  # a hang guard, not a speed limit
        while seen.count(marker) < count:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)

    try:
        wait_for(b"> ", 1)
        os.write(leader, b"caf\xe9\n")
        # Refused with "not valid UTF-8" by plain input(); readline (the REPL's line
        # editing) drops the byte itself. Either way the chat goes on.
        wait_for(b"> ", 2)
        os.write(leader, b"Hello\n")
        wait_for(b"> ", 3)
        os.write(leader, b"/exit\n")
        assert process.wait(timeout=HANG_GUARD) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert b"Traceback" not in seen, seen.decode(errors="replace")
