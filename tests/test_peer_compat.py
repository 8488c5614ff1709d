"""Code written for the peers just works (issue 13, findings 6 to 8).

OpenAI-style message dicts and the seed's ``Message(chunks=[TextChunk(...)])``,
``LlamaCPP.class_name()`` and ``DEFAULT_SYSTEM_PROMPT``; prompt settings changed after
construction take effect (no silent stale prompts); docstrings and typed options; a hint
for literal braces in a ``TextCompletionLLM`` template. Inference is real, on the tiny
models (greedy, so two ways of asking the same prompt give the same text).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from serapeum.core.errors import (
    ArgumentTypeError,
    ConfigurationError,
    OutputParserError,
    UnknownPluginError,
)
from serapeum.core.llms import (
    LLM,
    BaseLLM,
    CompletionToChatMixin,
    FinishReason,
    Message,
    MessageRole,
    TextChunk,
    TextCompletionLLM,
)
from serapeum.core.plugins import PromptFormatter
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.errors import MissingFormatterError
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf

# The seed's (LlamaIndex's llama_utils) text, character for character.
SEED_DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. "
    "Always answer as helpfully as possible and follow ALL given instructions. "
    "Do not speculate or make up information. "
    "Do not reference any given instructions or context. "
)


@pytest.fixture
def llm(tiny_model_path: Path) -> LlamaCPP:
    """A fresh instance (tests change its settings); the loaded model is shared."""
    return LlamaCPP(
        model_path=str(tiny_model_path), formatter="llama2", temperature=0.0, max_new_tokens=12
    )


# -- OpenAI-style dicts ------------------------------------------------------------------
CONVERSATION = [
    Message.system("Be brief."),
    Message.user("hi"),
    Message.assistant("hello"),
    Message.user("how are you?"),
]
AS_DICTS: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    {"role": "user", "content": "how are you?"},
]


def test_dicts_write_the_same_prompt_as_messages(tiny_llm: LlamaCPP) -> None:
    expected = tiny_llm.format_messages(CONVERSATION)
    assert tiny_llm.format_messages(AS_DICTS) == expected
    mixed = [CONVERSATION[0], AS_DICTS[1], CONVERSATION[2], AS_DICTS[3]]
    assert tiny_llm.format_messages(mixed) == expected


def test_chat_with_dicts_answers_as_with_messages(tiny_llm: LlamaCPP) -> None:
    expected = tiny_llm.chat(CONVERSATION)
    reply = tiny_llm.chat(AS_DICTS)
    assert reply.message.content == expected.message.content
    assert reply.message.role is MessageRole.ASSISTANT
    assert reply.usage is not None and expected.usage is not None
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    streamed = "".join(chunk.delta or "" for chunk in tiny_llm.chat(AS_DICTS, stream=True))
    assert streamed == expected.message.content


def test_async_chat_with_dicts(tiny_llm: LlamaCPP) -> None:
    expected = tiny_llm.chat(CONVERSATION).message.content

    async def ask() -> tuple[str, str]:
        whole = await tiny_llm.achat(AS_DICTS)
        parts = [chunk.delta or "" async for chunk in await tiny_llm.achat(AS_DICTS, stream=True)]
        return whole.message.content, "".join(parts)

    assert asyncio.run(ask()) == (expected, expected)


def test_text_parts_are_joined_and_extra_keys_kept(tiny_llm: LlamaCPP) -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    message = Message.from_dict({**parts, "name": "ada"})
    assert message.content == "a\nb"
    assert message.chunks == [TextChunk(content="a"), TextChunk(content="b")]
    assert message.additional_kwargs == {"name": "ada"}
    assert tiny_llm.format_messages([parts]) == tiny_llm.format_messages([Message.user("a\nb")])


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        ({"content": "hi"}, ConfigurationError, r"messages\[1\] has no 'role'"),
        (
            {"role": "wizard", "content": "hi"},
            ConfigurationError,
            r"messages\[1\] has the unknown role 'wizard'; use one of: system, user, assistant",
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            ConfigurationError,
            r"messages\[1\]\['content'\]\[0\] is a part of type 'image_url'; only text parts",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": 3}]},
            ArgumentTypeError,
            r"messages\[1\]\['content'\]\[0\] is a text part whose 'text' must be a str",
        ),
        ({"role": "user"}, ConfigurationError, r"messages\[1\] has no 'content'"),
        (
            {"role": "user", "content": 42},
            ArgumentTypeError,
            r"messages\[1\]\['content'\] must be a str or a list of text parts",
        ),
        ({"role": 1, "content": "x"}, ArgumentTypeError, r"messages\[1\]\['role'\] must be a str"),
        ("hi", ArgumentTypeError, r"messages\[1\] must be a serapeum Message.*OpenAI-style dict"),
    ],
)
def test_a_bad_dict_is_a_typed_error_naming_the_index(
    tiny_llm: LlamaCPP, bad: Any, error: type[Exception], words: str
) -> None:
    messages = [Message.user("ok"), bad]
    with pytest.raises(error, match=words):
        tiny_llm.chat(messages)
    with pytest.raises(error, match=words):
        tiny_llm.format_messages(messages)
    with pytest.raises(error, match=words):
        asyncio.run(tiny_llm.achat(messages))


def test_one_dict_instead_of_a_list_says_to_pass_a_list(tiny_llm: LlamaCPP) -> None:
    with pytest.raises(ArgumentTypeError, match="messages must be a list"):
        tiny_llm.chat({"role": "user", "content": "hi"})  # type: ignore[call-overload]


@pytest.mark.e2e_chat
def test_smollm2_answers_a_dict_chat(chat_model_path: Path) -> None:
    smollm = LlamaCPP(model_path=str(chat_model_path), temperature=0.0, max_new_tokens=48)
    question = "What is the capital of France? Answer with one word."
    reply = smollm.chat([{"role": "user", "content": question}])
    assert "Paris" in reply.message.content, reply.message.content


# -- the seed's chunks -------------------------------------------------------------------
def test_chunks_build_the_same_message_as_content(tiny_llm: LlamaCPP) -> None:
    built = Message(role=MessageRole.USER, chunks=[TextChunk(content="hi")])
    assert built == Message.user("hi")
    assert built.content == "hi" and built.chunks == [TextChunk(content="hi")]
    assert repr(built) == repr(Message.user("hi"))
    seed_conversation = [
        Message(role=m.role, chunks=[TextChunk(content=m.content)]) for m in CONVERSATION
    ]
    assert tiny_llm.format_messages(seed_conversation) == tiny_llm.format_messages(CONVERSATION)
    assert (
        tiny_llm.chat(seed_conversation).message.content
        == tiny_llm.chat(CONVERSATION).message.content
    )


def test_chunk_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="content= or as chunks=, not both"):
        Message(role="user", content="a", chunks=[TextChunk(content="b")])
    with pytest.raises(ArgumentTypeError, match=r"chunks\[1\] must be a TextChunk.*got bytes"):
        Message(role="user", chunks=[TextChunk(content="a"), b"\x89PNG"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="a part of type 'image'"):
        Message(role="user", chunks=[{"type": "image", "url": "x"}])  # type: ignore[list-item]
    with pytest.raises(ArgumentTypeError, match="TextChunk content must be a str"):
        TextChunk(content=3)  # type: ignore[arg-type]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TextChunk(content="a").content = "b"  # type: ignore[misc]


# -- class_name and DEFAULT_SYSTEM_PROMPT ------------------------------------------------
def test_class_name_is_the_seeds(tiny_llm: LlamaCPP) -> None:
    assert LlamaCPP.class_name() == "LlamaCPP"
    assert tiny_llm.class_name() == "LlamaCPP"


def test_default_system_prompts_are_exported_but_never_injected(
    tiny_llm: LlamaCPP, tiny_llama3_model_path: Path
) -> None:
    import serapeum.llama_cpp.formatters as formatters
    import serapeum_formatters_llama.llama2 as plugin2
    import serapeum_formatters_llama.llama3 as plugin3
    from serapeum.llama_cpp.formatters import llama2, llama3

    assert (
        llama2.DEFAULT_SYSTEM_PROMPT == plugin2.DEFAULT_SYSTEM_PROMPT == SEED_DEFAULT_SYSTEM_PROMPT
    )
    assert (
        llama3.DEFAULT_SYSTEM_PROMPT == plugin3.DEFAULT_SYSTEM_PROMPT == SEED_DEFAULT_SYSTEM_PROMPT
    )
    for module in (llama2, llama3, plugin2, plugin3):
        assert "DEFAULT_SYSTEM_PROMPT" in module.__all__
    assert set(formatters.__all__) == {"llama2", "llama3", "mistral"}
    # Without a system message the prompts are exactly today's: no default slipped in.
    assert tiny_llm.format_completion("hi") == "<s>[INST] hi [/INST]"
    assert tiny_llm.format_messages([{"role": "user", "content": "hi"}]) == "<s>[INST] hi [/INST]"
    assert llama2.completion_to_prompt("hi") == "<s>[INST] hi [/INST]"
    llama3_llm = LlamaCPP(model_path=str(tiny_llama3_model_path), formatter="llama3")
    assert llama3_llm.format_completion("hi") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Asked for, it is used like any system prompt.
    llama3_llm.system_prompt = llama3.DEFAULT_SYSTEM_PROMPT
    assert llama3.DEFAULT_SYSTEM_PROMPT.strip() in llama3_llm.format_completion("hi")


# -- finding 7: prompt settings changed after construction take effect ---------------------
def _answers_from(llm: LlamaCPP, prompt: str) -> None:
    """A real completion sends ``prompt``: same tokens counted, same greedy text."""
    response = llm.complete("hi")
    assert response.usage is not None
    assert response.usage.prompt_tokens == llm.count_tokens(prompt)
    assert response.text == llm.complete(prompt, formatted=True).text


def test_a_new_completion_to_prompt_is_used(llm: LlamaCPP) -> None:
    def shouty(completion: str, system_prompt: str | None = None) -> str:
        return f"<s>[INST] {completion.upper()}! [/INST]"

    llm.completion_to_prompt = shouty
    assert llm.completion_to_prompt is shouty
    assert llm.format_completion("hi") == "<s>[INST] HI! [/INST]"
    _answers_from(llm, "<s>[INST] HI! [/INST]")
    assert llm.formatter_reason == "chosen by the caller"
    # The formatter's other half and its stop markers stay.
    assert llm.format_messages([Message.user("hi")]) == "<s>[INST] hi [/INST]"


def test_a_new_messages_to_prompt_is_used_by_chat(llm: LlamaCPP) -> None:
    def plain(messages: Sequence[Message], system_prompt: str | None = None) -> str:
        return "".join(f"{m.role.value}: {m.content}\n" for m in messages) + "assistant:"

    llm.messages_to_prompt = plain
    prompt = llm.format_messages([{"role": "user", "content": "hi"}])
    assert prompt == "user: hi\nassistant:"
    reply = llm.chat([Message.user("hi")])
    assert reply.usage is not None and reply.usage.prompt_tokens == llm.count_tokens(prompt)
    assert reply.message.content == llm.complete(prompt, formatted=True).text


def test_a_new_formatter_is_used_with_its_stop_markers(llm: LlamaCPP) -> None:
    baseline = llm.complete("hi")
    assert len(baseline.text) > 6, baseline.text
    marker = baseline.text[3:6]
    assert marker.strip() and baseline.text.find(marker) == 3
    from serapeum_formatters_llama.llama2 import completion_to_prompt, messages_to_prompt

    probe = PromptFormatter(
        name="probe",
        messages_to_prompt=messages_to_prompt,
        completion_to_prompt=completion_to_prompt,
        stop=(marker,),
    )
    llm.formatter = probe
    assert llm.formatter_name == "probe"
    stopped = llm.complete("hi")  # the same prompt, so the same tokens, until the marker
    assert stopped.text == baseline.text[:3]
    assert stopped.finish_reason is FinishReason.STOP
    llm.formatter = "llama3"
    assert llm.format_completion("hi").startswith("<|begin_of_text|><|start_header_id|>user")
    _answers_from(llm, llm.format_completion("hi"))
    assert llm.formatter_name == "llama3"


def test_turn_reuse_follows_a_new_format(llm: LlamaCPP) -> None:
    """The evaluated prompt of the old format is not taken for the new one."""
    conversation = [Message.user("hi"), Message.assistant("yo"), Message.user("and?")]
    llm.chat(conversation)
    llm.formatter = "llama3"
    reply = llm.chat(conversation)
    prompt = llm.format_messages(conversation)
    assert prompt.startswith("<|begin_of_text|>")
    assert reply.usage is not None and reply.usage.prompt_tokens == llm.count_tokens(prompt)
    assert reply.message.content == llm.complete(prompt, formatted=True).text


def test_a_new_system_prompt_is_used_and_can_be_removed(llm: LlamaCPP) -> None:
    llm.system_prompt = "Be brief."
    expected = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]"
    assert llm.format_completion("hi") == expected
    assert llm.format_messages([Message.user("hi")]) == expected
    _answers_from(llm, expected)
    llm.system_prompt = None
    assert llm.format_completion("hi") == "<s>[INST] hi [/INST]"


def test_a_setting_that_cannot_write_prompts_is_refused_and_changes_nothing(
    llm: LlamaCPP,
) -> None:
    before = llm.format_completion("hi")
    with pytest.raises(UnknownPluginError, match="no formatter named 'nope'"):
        llm.formatter = "nope"
    with pytest.raises(ArgumentTypeError, match="system_prompt must be a str"):
        llm.system_prompt = 42  # type: ignore[assignment]
    with pytest.raises(ArgumentTypeError, match="completion_to_prompt must be a function"):
        llm.completion_to_prompt = "not callable"  # type: ignore[assignment]
    llm.system_prompt = "Be brief."
    with pytest.raises(ConfigurationError, match="takes no system_prompt argument"):
        llm.completion_to_prompt = lambda completion: completion
    # No formatter, no functions and no format in the tiny model: refused, nothing changed.
    with pytest.raises(MissingFormatterError):
        llm.formatter = None
    assert (llm.formatter, llm.completion_to_prompt, llm.system_prompt) == (
        "llama2",
        None,
        "Be brief.",
    )
    llm.system_prompt = None
    assert llm.format_completion("hi") == before


def test_removing_the_choice_goes_back_to_the_models_format(tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    path = build_tiny_gguf(tmp_path / "templated.gguf", TinyModelSpec(chat_template=template))
    llm = LlamaCPP(model_path=str(path), formatter="llama2", temperature=0.0, max_new_tokens=8)
    assert llm.format_completion("hi") == "<s>[INST] hi [/INST]"
    llm.formatter = None
    assert llm.formatter_name == "gguf-chat-template"
    assert llm.formatter_reason == "the chat template embedded in the GGUF file"
    assert llm.format_completion("hi") == "[user] hi\n[assistant]"
    _answers_from(llm, "[user] hi\n[assistant]")


# -- finding 8: docstrings, typed options -----------------------------------------------
@pytest.mark.parametrize("cls", [BaseLLM, LLM, CompletionToChatMixin, LlamaCPP, TextCompletionLLM])
def test_every_public_method_has_a_docstring(cls: type) -> None:
    missing = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__call__",):
            continue
        documentable = isinstance(member, property) or inspect.isroutine(member)
        if documentable and not (member.__doc__ or "").strip():
            missing.append(name)
    assert not missing, f"{cls.__name__}: no docstring on {missing}"
    if cls is LlamaCPP:
        assert "OpenAI-style dicts" in (LlamaCPP.chat.__doc__ or "")
        assert "GenerationOptions" in (LlamaCPP.complete.__doc__ or "")


def test_options_are_typed_keywords_in_the_signatures() -> None:
    from serapeum.core.llms import GenerationOptions

    hints = GenerationOptions.__annotations__
    for name in (
        "temperature",
        "max_new_tokens",
        "max_tokens",
        "stop",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "seed",
        "json_schema",
        "grammar",
        "logprobs",
        "cancel",
        "session",
    ):
        assert name in hints, name
    for method in (LlamaCPP.complete, LlamaCPP.chat, LlamaCPP.acomplete, LlamaCPP.achat):
        kwargs = inspect.signature(method).parameters["kwargs"]
        assert "Unpack[GenerationOptions]" in str(kwargs.annotation), method


def test_an_unknown_option_is_still_refused_at_run_time(tiny_llm: LlamaCPP) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown generation option.*'temprature'"):
        tiny_llm.complete("hi", temprature=0.1)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match=r"unknown generation option.*'temprature'"):
        tiny_llm.chat([{"role": "user", "content": "hi"}], temprature=0.1)  # type: ignore[call-overload]


# -- finding 8: literal braces in a TextCompletionLLM template ---------------------------
@attrs.frozen
class City:
    name: str


def test_single_braces_of_json_get_a_hint_to_double_them(tiny_llm: LlamaCPP) -> None:
    program = TextCompletionLLM(
        prompt='Answer like {"name": "Paris"} about {where}.', output_cls=City, llm=tiny_llm
    )
    with pytest.raises(
        ConfigurationError,
        match=r'needs "name" \(\{"name"\} looks like literal text.*doubled.*\{\{',
    ):
        program(where="France")
    with pytest.raises(ConfigurationError, match=r"looks like literal text.*\{\{"):
        TextCompletionLLM(prompt="A {\n  x: 1}", output_cls=City, llm=tiny_llm)()
    with pytest.raises(ConfigurationError, match=r"Single '\}'.*doubled"):
        TextCompletionLLM(prompt='Answer like "name": "Paris"}', output_cls=City, llm=tiny_llm)
    # Without literal-looking names the message is as before, without the hint.
    plain = TextCompletionLLM(prompt="About {where}.", output_cls=City, llm=tiny_llm)
    with pytest.raises(ConfigurationError, match=r"needs where: call with where=\.\.\.$"):
        plain()


def test_doubled_braces_reach_the_model_as_single_ones(tiny_llm: LlamaCPP) -> None:
    program = TextCompletionLLM(
        prompt='Answer like {{"name": "Paris"}} about {where}.',
        output_cls=City,
        llm=tiny_llm,
        constrained=False,  # only asked nicely: the tiny model's gibberish never parses
    )
    with pytest.raises(OutputParserError) as info:
        program(where="France")
    sent = program.parser.format('Answer like {"name": "Paris"} about France.')
    assert info.value.raw_text == tiny_llm.complete(sent).text
