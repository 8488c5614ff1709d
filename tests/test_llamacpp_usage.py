"""Every seed usage pattern, on real llama.cpp inference with the tiny GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.llms import ChatResponse, CompletionResponse, Message, MessageRole, Metadata
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.formatters.llama2 import completion_to_prompt, messages_to_prompt
from serapeum.llama_cpp.formatters.llama3 import (
    completion_to_prompt_v3_instruct,
    messages_to_prompt_v3_instruct,
)


def test_basic_completion(tiny_llm: LlamaCPP) -> None:
    response = tiny_llm.complete("Hello, how are you?")
    assert isinstance(response, CompletionResponse)
    assert response.text and response.text == response.raw["choices"][0]["text"]
    assert response.raw["usage"]["completion_tokens"] > 0


def test_seed_style_formatter_functions(tiny_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        messages_to_prompt=messages_to_prompt,
        completion_to_prompt=completion_to_prompt,
        temperature=0.1,
        max_new_tokens=16,
        context_window=512,
        generate_kwargs={},
        model_kwargs={"n_threads": 1},
        verbose=False,
    )
    assert llm.formatter_name is None
    assert llm.complete("Hello").raw["usage"]["completion_tokens"] <= 16


def test_formatter_by_name_uses_its_prompt_format(tiny_llama3_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_llama3_model_path), formatter="llama3", max_new_tokens=4)
    assert llm.format_completion("Hi") == completion_to_prompt_v3_instruct("Hi")
    assert llm.format_messages([Message.user("Hi")]) == messages_to_prompt_v3_instruct(
        [Message.user("Hi")]
    )
    expected_prompt_tokens = len(llm.tokenize(completion_to_prompt_v3_instruct("Hi")))
    assert llm.complete("Hi").raw["usage"]["prompt_tokens"] == expected_prompt_tokens


def test_chat(tiny_llm: LlamaCPP) -> None:
    response = tiny_llm.chat([Message(role=MessageRole.USER, content="Tell me a joke")])
    assert isinstance(response, ChatResponse)
    assert response.message.role is MessageRole.ASSISTANT
    assert response.message.content == response.raw["choices"][0]["text"]


def test_multi_turn_chat_sends_the_whole_conversation(tiny_llm: LlamaCPP) -> None:
    history = [Message.user("What is 2+2?")]
    first = tiny_llm.chat(history, max_new_tokens=8)
    history += [first.message, Message.user("And 3+3?")]
    second = tiny_llm.chat(history, max_new_tokens=8)
    tokenized = len(tiny_llm.tokenize(tiny_llm.format_messages(history)))
    # The first answer's own token ids stay in the cache, and they may spell the answer in
    # a different number of tokens than tokenising its text again: within its length.
    assert second.usage is not None and first.usage is not None
    assert abs(second.usage.prompt_tokens - tokenized) <= first.usage.completion_tokens
    assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens
    assert second.raw["usage"]["prompt_tokens"] == second.usage.prompt_tokens
    assert tiny_llm.format_messages(history).count("[INST]") == 2


def test_system_message_and_system_prompt(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", system_prompt="Be terse.")
    assert "<<SYS>>\nBe terse.\n<</SYS>>" in llm.format_completion("Hi")
    assert "<<SYS>>\nBe terse.\n<</SYS>>" in llm.format_messages([Message.user("Hi")])
    own = llm.format_messages([Message.system("Own rules."), Message.user("Hi")])
    assert "Own rules." in own and "Be terse." not in own
    assert llm.chat([Message.system("Own rules."), Message.user("Hi")], max_new_tokens=2).message


def test_system_prompt_with_functions_that_take_no_system_argument(tiny_model_path: Path) -> None:
    seen: list[list[Message]] = []

    def to_prompt(messages: list[Message]) -> str:
        seen.append(list(messages))
        return "".join(m.content for m in messages)

    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        messages_to_prompt=to_prompt,
        completion_to_prompt=lambda completion, system_prompt=None: f"{system_prompt} {completion}",
        system_prompt="SYS",
    )
    llm.format_messages([Message.user("hi")])
    assert seen[-1][0] == Message.system("SYS")  # never dropped silently
    assert llm.format_completion("hi") == "SYS hi"


def test_streaming_deltas_add_up_to_the_text(tiny_llm: LlamaCPP) -> None:
    chunks = list(tiny_llm.complete("Count with me", stream=True, max_new_tokens=24))
    assert len(chunks) > 1
    text = ""
    for chunk in chunks:
        text += chunk.delta
        assert chunk.text == text
    assert chunks[-1].raw["choices"][0]["finish_reason"] in {"length", "stop"}
    assert text == tiny_llm.complete("Count with me", max_new_tokens=24).text


def test_chat_streaming(tiny_llm: LlamaCPP) -> None:
    chunks = list(tiny_llm.chat([Message.user("Hi")], stream=True, max_new_tokens=12))
    assert all(c.message.role is MessageRole.ASSISTANT for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content


def test_preformatted_prompt_is_sent_as_is(tiny_llm: LlamaCPP) -> None:
    raw_prompt = "<s>[INST] exactly this [/INST]"
    response = tiny_llm.complete(raw_prompt, formatted=True, max_new_tokens=4)
    assert response.raw["usage"]["prompt_tokens"] == len(tiny_llm.tokenize(raw_prompt))
    double_wrapped = tiny_llm.complete(raw_prompt, formatted=False, max_new_tokens=4)
    assert double_wrapped.raw["usage"]["prompt_tokens"] > response.raw["usage"]["prompt_tokens"]


def test_stop_sequences_cut_the_text(tiny_llm: LlamaCPP) -> None:
    full = tiny_llm.complete("Hello", max_new_tokens=40).text
    stop_word = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop_word.strip(), full
    cut = tiny_llm.complete("Hello", max_new_tokens=40, stop=[stop_word]).text
    assert cut == full[: full.index(stop_word)]
    streamed = "".join(
        c.delta
        for c in tiny_llm.complete("Hello", stream=True, max_new_tokens=40, stop=[stop_word])
    )
    assert streamed == cut


def test_instance_stop_and_formatter_stop_are_both_applied(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", stop=["###"], temperature=0)
    request = llm._build_request("Hello", False, {})
    assert request.stop == ("###", "</s>")
    request = llm._build_request("Hello", False, {"stop": ["@@"]})
    assert request.stop == ("@@", "</s>")


def test_raw_response_is_the_backends_dict(tiny_llm: LlamaCPP) -> None:
    raw = tiny_llm.complete("Hi", max_new_tokens=3).raw
    assert raw["object"] == "text_completion"
    assert set(raw["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_tokenize_and_count_tokens(tiny_llm: LlamaCPP) -> None:
    tokens = tiny_llm.tokenize("hello world")
    assert tokens[0] == tiny_llm.loaded_model.llama.token_bos()
    assert all(isinstance(t, int) for t in tokens)
    assert tiny_llm.count_tokens("hello world") == len(tokens)
    assert tiny_llm.count_tokens("hello world hello world") > len(tokens)


def test_temperature_zero_is_deterministic(tiny_llm: LlamaCPP) -> None:
    answers = {tiny_llm.complete("Once upon a time", max_new_tokens=20).text for _ in range(3)}
    assert len(answers) == 1


def test_per_call_kwargs_override_the_instance(tiny_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        max_new_tokens=30,
        generate_kwargs={"max_tokens": 20, "seed": 7},
    )
    assert llm.complete("Hi").raw["usage"]["completion_tokens"] <= 20
    assert llm.complete("Hi", max_new_tokens=3).raw["usage"]["completion_tokens"] <= 3
    # seeded sampling at temperature > 0 is reproducible, and the per-call seed is used
    first = llm.complete("Hi", temperature=0.9, seed=11, max_new_tokens=12).text
    again = llm.complete("Hi", temperature=0.9, seed=11, max_new_tokens=12).text
    assert first == again


def test_reusable_instance_and_metadata(tiny_llm: LlamaCPP, tiny_model_path: Path) -> None:
    for prompt in ("one", "two", "three"):
        assert tiny_llm.complete(prompt, max_new_tokens=2).raw["usage"]["completion_tokens"] >= 1
    metadata = tiny_llm.metadata
    assert isinstance(metadata, Metadata)
    assert metadata.model_name == str(tiny_model_path.resolve())
    assert (metadata.context_window, metadata.num_output, metadata.is_chat_model) == (
        3900,
        256,
        False,
    )
    assert tiny_llm.model_path == str(tiny_model_path)


def test_file_uri_and_tilde_paths(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = LlamaCPP(model_path=tiny_model_path.resolve().as_uri(), formatter="llama2")
    assert by_uri.metadata.model_name == str(tiny_model_path.resolve())
    by_url = LlamaCPP(model_url=tiny_model_path.resolve().as_uri(), formatter="llama2")
    assert by_url.loaded_model is by_uri.loaded_model
    monkeypatch.setenv("HOME", str(tiny_model_path.parent))
    by_tilde = LlamaCPP(model_path=f"~/{tiny_model_path.name}", formatter="llama2")
    assert by_tilde.loaded_model is by_uri.loaded_model


def test_instances_share_one_loaded_model_and_its_lock(tiny_model_path: Path) -> None:
    first = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2")
    second = LlamaCPP(model_path=str(tiny_model_path), formatter="mistral", temperature=0.2)
    assert first.loaded_model is second.loaded_model
    assert first.loaded_model.lock is second.loaded_model.lock
    different_ctx = LlamaCPP(
        model_path=str(tiny_model_path), formatter="llama2", context_window=512
    )
    assert different_ctx.loaded_model is not first.loaded_model


def test_explicit_functions_override_the_formatters(tiny_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        completion_to_prompt=lambda completion, system_prompt=None: f"<<{completion}>>",
    )
    assert llm.format_completion("hi") == "<<hi>>"
    assert llm.format_messages([Message.user("hi")]) == messages_to_prompt([Message.user("hi")])
    assert llm.formatter_name == "llama2"
