"""The conformance kit itself: it must catch the mistakes it promises to catch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.llama_cpp.formatters.llama3 import LLAMA3
from serapeum.llama_cpp.testing.conformance import ConformanceError, check_formatter

BOS = "<|begin_of_text|>"


def drops_system(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return LLAMA3.render_messages([m for m in messages if m.role is not MessageRole.SYSTEM])


def reorders(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return LLAMA3.render_messages([messages[0], *reversed(messages[1:])], system_prompt)


def bare_completion(completion: str, system_prompt: str | None = None) -> str:
    return f"{BOS}{completion}"


def double_bos_messages(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return BOS + LLAMA3.render_messages(messages, system_prompt)


def double_bos_completion(completion: str, system_prompt: str | None = None) -> str:
    return BOS + LLAMA3.render_completion(completion, system_prompt)


BROKEN = {
    "drops system": ({"messages_to_prompt": drops_system}, "system message was dropped"),
    "reorders": ({"messages_to_prompt": reorders}, "lost or reordered"),
    "completion differs": (
        {"completion_to_prompt": bare_completion},
        "completion_to_prompt differs",
    ),
    "double BOS": (
        {
            "messages_to_prompt": double_bos_messages,
            "completion_to_prompt": double_bos_completion,
        },
        "BOS must reach the model exactly once",
    ),
    "empty stop": ({"stop": ("",)}, "stop markers must be non-empty"),
}


@pytest.mark.parametrize("changes, problem", BROKEN.values(), ids=BROKEN.keys())
def test_the_kit_catches(changes: dict[str, object], problem: str) -> None:
    broken: PromptFormatter = attrs.evolve(LLAMA3, name="broken", **changes)  # type: ignore[misc]
    with pytest.raises(ConformanceError, match=problem):
        check_formatter(broken)


def test_the_kit_passes_a_good_formatter() -> None:
    report = check_formatter(LLAMA3)
    assert report.bos_token == BOS and report.completion_tokens >= 1


def test_the_source_kit_catches_a_source_that_claims_everything(tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    from serapeum.core.plugins import ModelRequest, ModelSource
    from serapeum.llama_cpp.testing.conformance import check_source

    greedy = ModelSource(name="greedy", handles=lambda r: True, resolve=lambda r: tiny_model_path)
    with pytest.raises(ConformanceError, match="claims a url request"):
        check_source(greedy, ModelRequest(model_path=str(tiny_model_path)))


BUILT_IN = ["llama2", "llama3", "mistral", "gemma", "chatml"]


@pytest.fixture(scope="module")
def built_in_formatters() -> dict[str, PromptFormatter]:
    from serapeum.core.plugins import PluginHost

    host = PluginHost(strict=True)
    host.load_entry_points()
    return {name: host.formatters.entry(name).item for name in BUILT_IN}


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_formatter_passes_the_stop_marker_check(
    name: str, built_in_formatters: dict[str, PromptFormatter]
) -> None:
    report = check_formatter(built_in_formatters[name])
    assert report.completion_tokens >= 1


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_made_up_stop_marker_fails_naming_it(
    name: str, built_in_formatters: dict[str, PromptFormatter]
) -> None:
    made_up = attrs.evolve(built_in_formatters[name], stop=("<|made_up|>",))
    with pytest.raises(ConformanceError, match=r"stop marker '<\|made_up\|>'.*not a control token"):
        check_formatter(made_up)


def test_a_text_stop_marker_the_formatter_never_writes_fails() -> None:
    with pytest.raises(ConformanceError, match="stop marker 'ANSWER-END' never ends an assistant"):
        check_formatter(attrs.evolve(LLAMA3, stop=("ANSWER-END",)))


def pirate_messages(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    if system_prompt and (not messages or messages[0].role is not MessageRole.SYSTEM):
        messages = [Message.system(system_prompt), *messages]
    lines = [f"{m.role.value}: {m.content}<|arr|>\n" for m in messages]
    return "<|ahoy|>" + "".join(lines) + "assistant:"


def pirate_completion(completion: str, system_prompt: str | None = None) -> str:
    return pirate_messages([Message.user(completion)], system_prompt)


PIRATE = PromptFormatter(
    name="pirate",
    messages_to_prompt=pirate_messages,
    completion_to_prompt=pirate_completion,
    stop=("<|arr|>", "\nuser:"),
    prompt_starts_with_bos=True,
)


def test_a_new_family_declares_its_control_tokens() -> None:
    """Without a real vocabulary the kit uses what the plugin declares (and only that)."""
    with pytest.raises(ConformanceError, match=r"'<\|arr\|>' is not a control token"):
        check_formatter(PIRATE)
    report = check_formatter(PIRATE, special_tokens=["<|ahoy|>", "<|arr|>"])
    assert report.bos_token == "<|ahoy|>" and report.completion_tokens >= 1


def test_the_real_vocabulary_of_the_family_decides() -> None:
    """SmolLM2 is a ChatML model: its own GGUF vocabulary has <|im_end|>, not <|eot_id|>."""
    from serapeum.llama_cpp.demo import chat_model_path
    from serapeum_formatters_chatml import CHATML

    assert check_formatter(CHATML, model_path=chat_model_path()).completion_tokens >= 1
    with pytest.raises(ConformanceError, match=r"stop marker '<\|eot_id\|>'.*vocabulary of"):
        check_formatter(LLAMA3, model_path=chat_model_path())
    with pytest.raises(ConformanceError, match=r"stop marker '<\|made_up\|>'"):
        check_formatter(attrs.evolve(CHATML, stop=("<|made_up|>",)), model_path=chat_model_path())


def test_the_kit_names_the_extra_when_gguf_is_missing(tmp_path: Path) -> None:
    """An absent package cannot be provoked in this venv: ``sys.modules['gguf'] = None``
    makes ``import gguf`` fail exactly as if it were not installed."""
    script = (
        "import sys; sys.modules['gguf'] = None\n"
        "from serapeum.llama_cpp.testing.conformance import check_formatter\n"
        "from serapeum.llama_cpp.formatters.llama3 import LLAMA3\n"
        "try:\n    check_formatter(LLAMA3)\n"
        "except ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'serapeum-llama-cpp[testing]'" in result.stdout
    assert "'gguf'" in result.stdout


def test_a_real_vocabulary_and_declared_tokens_are_not_mixed(tmp_path: Path) -> None:
    from serapeum.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not both"):
        check_formatter(LLAMA3, model_path=tmp_path / "x.gguf", special_tokens=["<|x|>"])
