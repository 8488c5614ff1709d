"""Generation options on the command line: flags, ``-o KEY VALUE``, ``--json``, ``--version``,
help text and errors in the command line's words (issue 13, finding 3).

The command runs in subprocesses against the tiny GGUF model; ``parse_option`` (which the chat
REPL's ``/set`` uses too) is also checked in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.sampling import SUPPORTED_OPTIONS
from serapeum.llama_cpp.cli.options import GENERATION_OPTIONS, flag_for, parse_option

COMMAND = [sys.executable, "-m", "serapeum.llama_cpp"]
TINY = ("--formatter", "llama2", "--max-tokens", "6")
HANG_GUARD = 300  # seconds; only there so a hang fails one test instead of the run


def _cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=HANG_GUARD,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, *says: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("serapeum-llama-cpp: error: "), result.stderr
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- parse_option ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("temperature", "0.2", ("temperature", 0.2)),
        ("max_tokens", "12", ("max_new_tokens", 12)),
        ("max-tokens", "12", ("max_new_tokens", 12)),
        ("--max-tokens", "12", ("max_new_tokens", 12)),
        ("max_new_tokens", "12", ("max_new_tokens", 12)),
        ("top_p", "0.5", ("top_p", 0.5)),
        ("top_k", "0", ("top_k", 0)),
        ("min_p", "0.1", ("min_p", 0.1)),
        ("typical_p", "1", ("typical_p", 1.0)),
        ("repeat_penalty", "1.1", ("repeat_penalty", 1.1)),
        ("seed", "42", ("seed", 42)),
        ("stop", "END", ("stop", ["END"])),
        ("stop", "\\n\\n", ("stop", ["\n\n"])),
        ("json_schema", '{"type": "string"}', ("json_schema", {"type": "string"})),
        ("grammar", 'root ::= "yes"', ("grammar", 'root ::= "yes"')),
        ("logit_bias", '{"42": -100}', ("logit_bias", {42: -100.0})),
        ("logprobs", "3", ("logprobs", 3)),
        ("mirostat_mode", "2", ("mirostat_mode", 2)),
    ],
)
def test_parse_option_turns_text_into_the_librarys_keyword_and_value(
    key: str, value: str, expected: tuple[str, Any]
) -> None:
    assert parse_option(key, value) == expected


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("temperature", "warm", "temperature must be a number from 0.0 to 1.0; got 'warm'"),
        ("temperature", "nan", "temperature must be"),
        ("temperature", "1.5", "temperature must be"),
        ("max_tokens", "0", "max_tokens must be a positive integer"),
        ("max_tokens", "1e3", "max_tokens must be a positive integer"),
        ("top_k", "-1", "top_k must be an integer from 0"),
        ("seed", "-1", "seed must be an integer from 0 to 4294967295"),
        ("stop", "", "stop must be a non-empty text"),
        ("json_schema", "[1, 2]", "json_schema must be a JSON Schema"),
        ("json_schema", "{nope", "json_schema: not JSON"),
        ("logit_bias", '{"x": 1}', "logit_bias must be a JSON object"),
    ],
)
def test_parse_option_refuses_bad_values_naming_the_option(key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_option(key, value)
    assert says in str(caught.value)
    assert "max_new_tokens" not in str(caught.value)


def test_parse_option_refuses_unknown_keys_with_a_did_you_mean() -> None:
    with pytest.raises(ConfigurationError, match="did you mean temperature") as caught:
        parse_option("temprature", "0.2")
    assert "top_p" in str(caught.value)  # the known ones are listed
    with pytest.raises(ConfigurationError, match="unknown option 'zzz'"):
        parse_option("zzz", "1")


def test_schemas_and_grammars_can_come_from_a_file(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"enum": ["a", "b"]}')
    assert parse_option("json_schema", f"@{schema}") == ("json_schema", {"enum": ["a", "b"]})
    grammar = tmp_path / "yes.gbnf"
    grammar.write_text('root ::= "yes"\n')
    assert parse_option("grammar", f"@{grammar}") == ("grammar", 'root ::= "yes"\n')
    with pytest.raises(ConfigurationError, match=r"no-such\.json"):
        parse_option("json_schema", f"@{tmp_path / 'no-such.json'}")


def test_the_table_covers_every_option_the_library_takes_from_text() -> None:
    """Everything but Python callables, aliases and the ignored compatibility options."""
    not_from_text = {"logits_processor", "stopping_criteria", "response_format"}
    ignored = {"tfs_z", "penalize_nl"}
    keywords = {spec.keyword for spec in GENERATION_OPTIONS.values()}
    wanted = {"temperature", "max_new_tokens", "stop", *SUPPORTED_OPTIONS}
    assert keywords == wanted - not_from_text - ignored
    assert flag_for("max_new_tokens") == "--max-tokens"
    assert flag_for("min_p") == "-o min_p"


SAMPLES = {
    "temperature": "0.5",
    "max_tokens": "2",
    "top_p": "0.9",
    "top_k": "10",
    "min_p": "0.1",
    "typical_p": "0.9",
    "repeat_penalty": "1.1",
    "frequency_penalty": "0.1",
    "presence_penalty": "0.1",
    "mirostat_mode": "2",
    "mirostat_tau": "4",
    "mirostat_eta": "0.2",
    "seed": "7",
    "stop": "\\n",
    "json_schema": '{"type": "integer"}',
    "grammar": 'root ::= "yes"',
    "logit_bias": '{"5": -100}',
    "logprobs": "2",
}


def test_every_option_is_accepted_by_the_library(tiny_llm: LlamaCPP) -> None:
    assert set(SAMPLES) == set(GENERATION_OPTIONS)
    for key, text in SAMPLES.items():
        keyword, value = parse_option(key, text)
        options: dict[str, Any] = {"max_new_tokens": 2, keyword: value}
        response = tiny_llm.complete("Hi", **options)
        assert response.finish_reason is not None, key


# -- flags and -o on the command line --------------------------------------------------------


def test_seed_is_an_option_not_the_prompt(tiny_model_path: Path) -> None:
    """``--seed 1 hi`` samples with seed 1 and completes "hi" (it once took 1 as the prompt)."""
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.9)
    expected = llm.complete("hi", max_new_tokens=6, seed=1).text + "\n"
    model = ("-m", str(tiny_model_path), *TINY, "--temperature", "0.9")
    flag = _cli("complete", *model, "--seed", "1", "hi")
    assert flag.returncode == 0, flag.stderr
    assert flag.stdout == expected
    generic = _cli("complete", *model, "-o", "seed", "1", "hi")
    assert generic.stdout == expected


def test_flags_and_o_options_reach_the_library(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.7)
    options: dict[str, Any] = {"seed": 3, "top_p": 0.5, "top_k": 5, "min_p": 0.2}
    expected = llm.complete("Hello", max_new_tokens=8, **options).text + "\n"
    args = ["complete", "-m", str(tiny_model_path), "--formatter", "llama2"]
    args += ["--temperature", "0.7", "--seed", "3", "--top-p", "0.5", "--top-k", "5"]
    result = _cli(*args, "-o", "min_p", "0.2", "-o", "max_tokens", "8", "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_the_last_value_wins_and_stop_adds_up(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
    full = llm.complete("Hello", max_new_tokens=12).text
    assert len(full) > 4
    stops = [full[3:5], full[1:3]]
    expected = llm.complete("Hello", max_new_tokens=12, stop=stops).text
    assert expected != full
    args = ["complete", "-m", str(tiny_model_path), "--formatter", "llama2"]
    args += ["--temperature", "0.5", "-o", "temperature", "0", "--max-tokens", "12"]
    result = _cli(*args, "--stop", stops[0], "-o", "stop", stops[1], "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_no_stream_prints_the_same_text(tiny_model_path: Path) -> None:
    base = ("complete", "-m", str(tiny_model_path), *TINY, "--temperature", "0", "Hello")
    streamed = _cli(*base)
    whole = _cli(*base, "--no-stream")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == streamed.stdout


def test_json_output_has_text_usage_and_timing(tiny_model_path: Path) -> None:
    base = ("complete", "-m", str(tiny_model_path), *TINY, "--temperature", "0", "Hello")
    streamed = _cli(*base)
    result = _cli(*base, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["text"] + "\n" == streamed.stdout
    assert record["model"] == tiny_model_path.name
    assert record["finish_reason"] == "length"
    assert record["usage"]["completion_tokens"] == 6
    assert record["usage"]["total_tokens"] == (
        record["usage"]["prompt_tokens"] + record["usage"]["completion_tokens"]
    )
    assert set(record["timing"]) == {
        "time_to_first_token",
        "prompt_seconds",
        "generation_seconds",
        "tokens_per_second",
    }
    chat = _cli("chat", "-m", str(tiny_model_path), *TINY, "--json", stdin="Hi!")
    assert chat.returncode == 0, chat.stderr
    assert set(json.loads(chat.stdout)) == {"model", "text", "finish_reason", "usage", "timing"}


def test_json_is_not_read_as_json_schema_nor_any_abbreviation(tiny_model_path: Path) -> None:
    for abbreviation, meant in (
        ("--json-s", "--json-schema"),
        ("--temp", "--temperature"),
        ("--max", "--max-tokens"),
    ):
        result = _cli("complete", "-m", str(tiny_model_path), abbreviation, "x", "hi")
        line = _one_line_error(result, 2, f"unknown option {abbreviation}; did you mean {meant}?")
        assert line.endswith("(see serapeum-llama-cpp complete --help)")


def test_an_unknown_flag_is_matched_among_the_subcommands_own_flags() -> None:
    chat = _cli("chat", "--sytem", "Be brief.")
    _one_line_error(chat, 2, "unknown option --sytem; did you mean --system?", "chat --help")
    nothing = _cli("models", "--bogus")
    line = _one_line_error(nothing, 2, "unknown option --bogus", "models --help")
    assert "did you mean" not in line


def test_an_unquoted_prompt_of_several_words_gets_a_hint(tiny_model_path: Path) -> None:
    result = _cli("complete", "-m", str(tiny_model_path), "hello", "there", "how", "are", "you")
    _one_line_error(
        result,
        2,
        "unrecognized arguments: there how are you",
        "serapeum-llama-cpp complete 'hello there how are you'",
    )


def test_the_top_level_help_points_to_the_generation_flags() -> None:
    text = _cli("--help").stdout
    assert "the flags below" not in text
    assert '"serapeum-llama-cpp complete --help"' in text and "--temperature" in text


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"serapeum-llama-cpp {version('serapeum-llama-cpp')}\n"


def test_debug_works_before_and_after_the_command() -> None:
    for args in (
        ("--debug", "complete", "-m", "/no/such/model.gguf", "hi"),
        ("complete", "--debug", "-m", "/no/such/model.gguf", "hi"),
        ("complete", "-m", "/no/such/model.gguf", "hi", "--debug"),
    ):
        result = _cli(*args)
        assert result.returncode == 2 and "Traceback" in result.stderr, (args, result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("complete",),
        ("chat",),
        ("serve",),
        ("download",),
        ("models",),
        ("aliases",),
        ("plugins",),
        ("formatters",),
    ],
)
def test_help_has_no_rest_markup(args: tuple[str, ...]) -> None:
    result = _cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "``" not in result.stdout and ":func:" not in result.stdout
    assert "usage: serapeum-llama-cpp" in result.stdout


def test_help_says_which_model_is_the_default_and_that_gemma_is_a_base_model() -> None:
    complete = _cli("complete", "--help").stdout
    assert "gemma3-270m" in complete and "base model" in complete
    chat = _cli("chat", "--help").stdout
    assert "smollm2-135m-instruct" in chat
    assert "-o KEY VALUE" in chat and "--seed" in chat and "--no-stream" in chat


# -- errors in the command line's words --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--max-tokens", "0"), "--max-tokens must be a positive integer; got '0'"),
        (("--top-p", "2"), "--top-p must be a number from 0.0 to 1.0"),
        (("--top-k", "many"), "--top-k must be an integer"),
        (("--seed", "x"), "--seed must be an integer"),
        (("-o", "top_k", "x"), "-o top_k must be an integer"),
        (("-o", "max_tokens", "0"), "-o max_tokens must be a positive integer"),
        (("-o", "tempreature", "0"), "did you mean temperature"),
        (("-o",), "expected 2 arguments"),  # -o hi: a key without a value
    ],
)
def test_bad_option_values_are_usage_errors_in_cli_words(
    tiny_model_path: Path, args: tuple[str, ...], says: str
) -> None:
    result = _cli("complete", "-m", str(tiny_model_path), *args, "hi")
    line = _one_line_error(result, 2, says, "--help")
    assert "max_new_tokens" not in line


@pytest.mark.parametrize("ctx", ["0", "-1", "100000000000"])
def test_ctx_errors_exit_2_and_name_ctx(tiny_model_path: Path, ctx: str) -> None:
    result = _cli("complete", "-m", str(tiny_model_path), *TINY, "--ctx", ctx, "hi")
    line = _one_line_error(result, 2, "--ctx")
    assert "context_window" not in line


def test_a_prompt_over_ctx_names_ctx(tiny_model_path: Path) -> None:
    result = _cli("complete", "-m", str(tiny_model_path), *TINY, "--ctx", "4", "hello there")
    line = _one_line_error(result, 2, "--ctx")
    assert "context_window" not in line


def test_an_answer_cut_by_max_tokens_names_max_tokens(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    args = ("complete", "-m", str(tiny_model_path), "--formatter", "llama2", "--max-tokens", "2")
    result = _cli(*args, "--json-schema", str(schema), "hi")
    line = _one_line_error(result, 2, "--max-tokens")
    assert "max_new_tokens" not in line


# -- serve ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_answers_with_the_generation_options_as_defaults(tiny_model_path: Path) -> None:
    import httpx

    port = _free_port()
    process = subprocess.Popen(
        [*COMMAND, "serve", "-m", str(tiny_model_path), *TINY, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD  # a hang guard, not a speed limit
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert models.status_code == 200
        assert models.json()["data"][0]["id"] == tiny_model_path.name
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": tiny_model_path.name, "prompt": "Hello"},
            timeout=HANG_GUARD,
        ).json()
        assert answer["usage"]["completion_tokens"] == 6  # --max-tokens is the default
    finally:
        process.terminate()
        process.wait(timeout=HANG_GUARD)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--port", "70000"), "--port: must be a port number"),
        (("--n-parallel", "0"), "--n-parallel: must be a positive integer"),
    ],
)
def test_serve_refuses_bad_arguments(args: tuple[str, ...], says: str) -> None:
    _one_line_error(_cli("serve", *args), 2, says)


# -- the default chat model ----------------------------------------------------------------------


@pytest.mark.e2e_chat
def test_chat_defaults_to_the_instruct_model_and_answers(tmp_path: Path) -> None:
    question = "What is the capital of France? Answer with one word."
    result = _cli(
        "chat",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--json",
        stdin=question,
        SERAPEUM_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stderr  # says which default it used
    record = json.loads(result.stdout)
    assert "Paris" in record["text"] and record["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def _saved_chat(path: Path) -> list[dict[str, str]]:
    history = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
    ]
    path.write_text(
        json.dumps(
            {
                "serapeum_chat": 1,
                "system": "Be brief.",
                "options": {"temperature": 0.0, "max_tokens": 6},
                "messages": history,
            }
        )
    )
    return history


def test_a_piped_chat_continues_a_saved_conversation(tiny_model_path: Path, tmp_path: Path) -> None:
    """Like ``llm -c``: the saved system prompt, options and turns, then the piped question;
    both appended to the file."""
    from serapeum.core.llms import Message

    saved = tmp_path / "talk.json"
    history = _saved_chat(saved)
    model = ("-m", str(tiny_model_path), "--formatter", "llama2")
    result = _cli("chat", *model, "--continue", str(saved), stdin="And again?\n")
    assert result.returncode == 0, result.stderr
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2")
    expected = llm.chat(
        [Message.system("Be brief."), *(Message(**m) for m in history), Message.user("And again?")],
        temperature=0.0,
        max_new_tokens=6,
    ).message.content
    assert result.stdout == expected + "\n"
    document = json.loads(saved.read_text())
    assert document["system"] == "Be brief." and document["options"]["max_tokens"] == 6
    assert document["messages"] == [
        *history,
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": expected},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json"]  # no temporary left
    again = _cli("chat", *model, "--continue", str(saved), stdin="Once more")
    assert again.returncode == 0, again.stderr
    assert len(json.loads(saved.read_text())["messages"]) == 6


def test_a_bad_continue_file_is_reported_before_the_model_loads(tmp_path: Path) -> None:
    """The model named here does not exist: the error must be the conversation file's."""
    import pty

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = ("chat", "-m", "/no/such/model.gguf", "--continue", str(bad))
    piped = _cli(*args, stdin="Hi")
    _one_line_error(piped, 2, f"{bad} is not JSON")
    leader, follower = pty.openpty()
    try:
        terminal = subprocess.run(
            [*COMMAND, *args], stdin=follower, capture_output=True, text=True, timeout=HANG_GUARD
        )
    finally:
        os.close(follower)
        os.close(leader)
    _one_line_error(terminal, 2, f"{bad} is not JSON")
    missing = _cli("chat", "-m", "/no/such/model.gguf", "--continue", str(tmp_path / "no.json"))
    _one_line_error(missing, 2, "no.json")
