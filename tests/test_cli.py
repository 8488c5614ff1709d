"""The ``serapeum-llama-cpp download`` command, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SERAPEUM_CACHE_DIR": str(cache)},
        timeout=300,
    )


def test_download_prints_the_cached_path_and_reuses_it(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/models/tiny.gguf", model_bytes)
    first = _run("download", "--quiet", url, cache=cache_root)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.is_relative_to(cache_root) and path.read_bytes() == model_bytes
    second = _run("download", url, cache=cache_root)
    assert second.stdout.strip() == str(path)
    assert len(http_server.requests_for("/models/tiny.gguf")) == 1


def test_download_of_a_local_file_prints_its_path(tiny_model_path: Path, cache_root: Path) -> None:
    result = _run("download", str(tiny_model_path), cache=cache_root)
    assert result.returncode == 0 and result.stdout.strip() == str(tiny_model_path.resolve())


def test_errors_are_one_line_without_traceback(http_server: Any, cache_root: Path) -> None:
    http_server.serve("/missing.gguf", b"", status=404)
    not_found = _run("download", http_server.url("/missing.gguf"), cache=cache_root)
    assert not_found.returncode == 1
    assert "HTTP 404" in not_found.stderr and "Traceback" not in not_found.stderr
    bad_sha = _run("download", "--sha256", "xyz", http_server.url("/m.gguf"), cache=cache_root)
    assert bad_sha.returncode == 2 and "64 hexadecimal digits" in bad_sha.stderr
    bad_hf = _run("download", "hf:only-a-repo", cache=cache_root)
    assert bad_hf.returncode == 2 and "hf:ORG/REPO/FILE" in bad_hf.stderr
    debug = _run("--debug", "download", "/no/such/model.gguf", cache=cache_root)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def _cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


TINY = ("--formatter", "llama2", "--temperature", "0", "--max-tokens", "6")


def test_complete_streams_the_same_text_as_the_api(tiny_model_path: Path) -> None:
    from serapeum.llama_cpp import LlamaCPP

    result = _cli("complete", "-m", str(tiny_model_path), *TINY, "Hello there")
    assert result.returncode == 0, result.stderr
    expected = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
    assert result.stdout == expected.complete("Hello there", max_new_tokens=6).text + "\n"
    piped = _cli("complete", "-m", str(tiny_model_path), *TINY, stdin="Hello there\n")
    assert piped.stdout == result.stdout


def test_chat_answers_a_piped_question_once(tiny_model_path: Path) -> None:
    result = _cli("chat", "-m", str(tiny_model_path), *TINY, "-s", "Be brief.", stdin="Hi!")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_interactive_chat_in_a_terminal_answers_turn_after_turn(tiny_model_path: Path) -> None:
    import pty
    import select
    import time

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "serapeum.llama_cpp", "chat", "-m", str(tiny_model_path), *TINY],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    seen = b""

    def wait_for_prompts(count: int) -> None:
        """Read the terminal until the chat's "> " prompt has been shown ``count`` times."""
        nonlocal seen
        deadline = time.monotonic() + 120  # a hang guard, not a speed limit
        while seen.count(b"> ") < count:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)

    try:
        wait_for_prompts(1)
        os.write(leader, b"Hello\n")
        wait_for_prompts(2)  # an answer was streamed, then the next prompt
        os.write(leader, b"And again\n")
        wait_for_prompts(3)
        os.write(leader, b"/exit\n")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "Chatting with" in text and "(llama2 format)" in text


def test_plugins_formatters_and_models_listings(cache_root: Path) -> None:
    plugins = _cli("plugins", SERAPEUM_CACHE_DIR=str(cache_root))
    assert plugins.returncode == 0
    assert "serapeum-formatters-llama" in plugins.stdout and "formatter llama3" in plugins.stdout
    disabled = _cli("plugins", SERAPEUM_DISABLE_PLUGINS="gemma")
    assert "[gemma]: not loaded (listed in SERAPEUM_DISABLE_PLUGINS)" in disabled.stdout
    formatters = _cli("formatters")
    assert "gemma (also gemma2, gemma3, gemma-it)" in formatters.stdout
    assert "detects its models" in formatters.stdout
    models = _cli("models", SERAPEUM_CACHE_DIR=str(cache_root))
    assert "nothing cached" in models.stdout
    assert "aliases:" not in models.stdout  # the aliases command lists those
    assert "serapeum-llama-cpp aliases lists the names -m takes" in models.stdout


BROKEN_PLUGIN = """
from serapeum.core.plugins import PromptFormatter, hookimpl


def _same(completion, system_prompt=None):
    return completion


@hookimpl
def serapeum_register_formatters():
    return [PromptFormatter(name="half", messages_to_prompt=lambda messages, system_prompt=None: "",
                            completion_to_prompt=_same)]
"""


def _install_plugin(site: Path, name: str, code: str) -> None:
    """A real installed distribution (its module plus .dist-info), as pip leaves it."""
    (site / f"serapeum_{name}_plugin.py").write_text(code)
    info = site / f"{name}_fake-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-fake\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[serapeum]\n{name} = serapeum_{name}_plugin\n")


@pytest.mark.parametrize("registers", [False, True])
def test_a_failed_plugin_is_listed_once_not_as_registering_nothing(
    tmp_path: Path, registers: bool
) -> None:
    code = "from serapeum.core.plugins import hookimpl\n\n\n@hookimpl\ndef serapeum_register_formatter():\n    return []\n"
    if registers:  # a good hook beside the misspelled one
        code = BROKEN_PLUGIN + "\n\n@hookimpl\ndef serapeum_register_formatter():\n    return []\n"
    _install_plugin(tmp_path, "myplug", code)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", "plugins"],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **env}.items() if k != "SERAPEUM_STRICT_PLUGINS"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "[myplug]" in line]
    assert not any(line.endswith(": nothing") for line in lines), lines
    assert lines[-1].startswith("myplug-fake  [myplug]: FAILED: unknown hook"), lines
    assert len(lines) == (2 if registers else 1), lines
    if registers:
        assert lines[0] == "myplug-fake 0.1  [myplug]: formatter half", lines


def test_user_errors_exit_2_without_a_traceback(tiny_model_path: Path) -> None:
    missing = _cli("complete", "-m", "/no/such/model.gguf", "hi")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    no_format = _cli("complete", "-m", str(tiny_model_path), "hi")
    assert no_format.returncode == 2 and "missing prompt formatters" in no_format.stderr
    bad_temperature = _cli(
        "complete", "-m", str(tiny_model_path), *TINY, "--temperature", "3", "hi"
    )
    assert bad_temperature.returncode == 2 and "temperature" in bad_temperature.stderr


def test_json_schema_constrains_the_answer(tiny_model_path: Path, tmp_path: Path) -> None:
    import json

    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"colour": {"enum": ["red", "green", "blue"]}},
                "required": ["colour"],
            }
        )
    )
    result = _cli(
        "complete",
        "-m",
        str(tiny_model_path),
        "--formatter",
        "llama2",
        "--temperature",
        "0",
        "--max-tokens",
        "60",
        "--json-schema",
        str(schema),
        "Pick a colour",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["colour"] in {"red", "green", "blue"}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = _cli("complete", "-m", str(tiny_model_path), "--json-schema", str(broken), "hi")
    assert bad.returncode == 2 and "--json-schema" in bad.stderr
    impossible = tmp_path / "impossible.json"
    impossible.write_text(json.dumps({"type": "integer", "minimum": 5, "maximum": 3}))
    refused = _cli(
        "complete",
        "-m",
        str(tiny_model_path),
        "--formatter",
        "llama2",
        "--json-schema",
        str(impossible),
        "hi",
    )
    assert refused.returncode == 2, refused.stderr
    assert "--json-schema" in refused.stderr and "unsatisfiable" in refused.stderr.lower()
    assert "Traceback" not in refused.stderr


@pytest.mark.e2e
def test_disabling_the_gemma_plugin_changes_detection_for_the_default_model() -> None:
    detected = _cli("complete", "--raw", "--max-tokens", "2", "--temperature", "0", "1, 2,")
    assert detected.returncode == 0, detected.stderr
    disabled = _cli("complete", "--max-tokens", "2", "hi", SERAPEUM_DISABLE_PLUGINS="gemma")
    assert disabled.returncode == 2
    assert "no installed formatter recognises this model" in disabled.stderr


@pytest.mark.e2e
def test_complete_on_the_base_model_continues_the_text_as_written() -> None:
    # Gemma 3 270M is a base model: wrapped in a chat turn the prompt made it babble.
    args = ("--temperature", "0", "--max-tokens", "8", "The three primary colours are")
    result = _cli("complete", *args)
    assert result.returncode == 0, result.stderr
    assert "red" in result.stdout and "blue" in result.stdout, result.stdout
    assert result.stdout == _cli("complete", "--raw", *args).stdout


def _documented_runs() -> list[tuple[str, str]]:
    """Each ``$ serapeum-llama-cpp ...`` line of docs/cli.md with the output shown under it."""
    import re

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    runs: list[tuple[str, str]] = []
    for block in re.findall(r"```text\n(.*?)```", text, flags=re.DOTALL):
        for part in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, _, shown = part.partition("\n")
            runs.append((command, shown))
    return runs


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        pytest.param(*run, marks=[pytest.mark.e2e_chat] if "<<<" in run[0] else [])
        for run in _documented_runs()
    ],
)
def test_the_guides_shown_output_is_what_prints(command: str, shown: str) -> None:
    import shlex

    words = shlex.split(command)
    stdin = None
    if "<<<" in words:
        at = words.index("<<<")
        stdin, words = words[at + 1] + "\n", words[:at]
    assert words[0] == "serapeum-llama-cpp"
    result = _cli(*words[1:], stdin=stdin)
    printed = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not line.startswith("Using the default model")
    ]
    assert printed == shown.splitlines()
