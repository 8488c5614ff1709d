"""The backend's own generation loop: text assembly, stop sequences, finish reasons,
usage figures and prompt-cache reuse across turns, on real llama.cpp inference.

Several tests script the generated tokens with a logits processor that leaves only the
next scripted token possible: the tokens still go through llama.cpp's decode, sampler
and our detokeniser; only the choice of token is forced, so that multi-byte characters
and stop sequences split over tokens happen on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serapeum.core.cancellation import CancelToken
from serapeum.core.llms import FinishReason, Message
from serapeum.llama_cpp import LlamaCPP


def scripted(tokens: Sequence[int], then: int | None = None) -> Callable[[Any, Any], Any]:
    """A logits processor that forces ``tokens`` in order, then ``then`` (if given)."""
    remaining = list(tokens)

    def force(_input_ids: Any, logits: Any) -> Any:
        forced = remaining.pop(0) if remaining else then
        if forced is None:
            return logits
        out = np.full_like(logits, -np.inf)
        out[forced] = 0.0
        return out

    return force


def token_with_piece(llm: LlamaCPP, piece: bytes) -> int:
    model = llm.loaded_model
    for token in range(model.n_vocab):  # type: ignore[attr-defined]
        if model.piece(token) == piece:  # type: ignore[attr-defined]
            return token
    raise AssertionError(f"no token spells {piece!r}")


def plain_tokens(llm: LlamaCPP, text: str) -> list[int]:
    return list(llm.loaded_model.llama.tokenize(text.encode(), add_bos=False, special=False))  # type: ignore[attr-defined]


def test_multibyte_characters_split_over_tokens_come_out_whole(tiny_llm: LlamaCPP) -> None:
    tokens = plain_tokens(tiny_llm, "héllo wörld")
    pieces = [tiny_llm.loaded_model.piece(t) for t in tokens]  # type: ignore[attr-defined]
    assert b"\xc3" in pieces, "the test needs é split over byte tokens"
    chunks = list(
        tiny_llm.complete(
            "x", stream=True, max_new_tokens=len(tokens), logits_processor=scripted(tokens)
        )
    )
    deltas = [c.delta for c in chunks if c.delta]
    assert "".join(deltas) == " héllo wörld"
    assert all("\ufffd" not in d for d in deltas)
    assert "é" in deltas or any(d.startswith("é") for d in deltas)
    assert chunks[-1].text == " héllo wörld"
    assert chunks[-1].finish_reason is FinishReason.LENGTH


def test_incomplete_character_at_the_end_is_replaced_not_dropped(tiny_llm: LlamaCPP) -> None:
    lead_byte = token_with_piece(tiny_llm, b"\xc3")
    response = tiny_llm.complete("x", max_new_tokens=1, logits_processor=scripted([lead_byte]))
    assert response.text == "\ufffd"
    assert response.usage is not None and response.usage.completion_tokens == 1


def test_stop_sequence_split_over_tokens_is_cut_and_never_streamed(tiny_llm: LlamaCPP) -> None:
    tokens = plain_tokens(tiny_llm, "one two STOP three")
    chunks = list(
        tiny_llm.complete(
            "x",
            stream=True,
            stop=["STOP"],
            max_new_tokens=len(tokens),
            logits_processor=scripted(tokens),
        )
    )
    streamed = "".join(c.delta or "" for c in chunks)
    assert streamed == " one two "
    assert "S" not in streamed
    final = chunks[-1]
    assert final.finish_reason is FinishReason.STOP
    assert final.raw["choices"][0]["finish_reason"] == "stop"
    assert final.usage is not None
    # the tokens up to the one that completed "STOP" were generated, no more
    assert final.usage.completion_tokens == len(plain_tokens(tiny_llm, "one two STOP"))


def test_a_near_miss_of_a_stop_sequence_is_released(tiny_llm: LlamaCPP) -> None:
    tokens = plain_tokens(tiny_llm, "one STO two")
    response = tiny_llm.complete(
        "x", stop=["STOP"], max_new_tokens=len(tokens), logits_processor=scripted(tokens)
    )
    assert response.text == " one STO two"
    assert response.finish_reason is FinishReason.LENGTH


def test_held_back_text_is_released_when_an_end_of_turn_token_ends_generation(
    tiny_llm: LlamaCPP,
) -> None:
    tokens = plain_tokens(tiny_llm, "one ST")
    eos = tiny_llm.loaded_model.llama.token_eos()  # type: ignore[attr-defined]
    response = tiny_llm.complete(
        "x", stop=["STOP"], max_new_tokens=20, logits_processor=scripted(tokens, then=eos)
    )
    assert response.text == " one ST"
    assert response.finish_reason is FinishReason.STOP
    assert response.usage is not None and response.usage.completion_tokens == len(tokens)


def test_length_finish_and_token_counts(tiny_llm: LlamaCPP) -> None:
    response = tiny_llm.complete(
        "Hello", max_new_tokens=3, logits_processor=scripted([], then=None)
    )
    assert response.finish_reason is FinishReason.LENGTH
    assert response.usage is not None
    assert response.usage.completion_tokens == 3
    assert response.usage.prompt_tokens == len(
        tiny_llm.tokenize(tiny_llm.format_completion("Hello"))
    )
    assert response.raw["usage"] == {
        "prompt_tokens": response.usage.prompt_tokens,
        "completion_tokens": 3,
        "total_tokens": response.usage.prompt_tokens + 3,
    }
    timing = response.timing
    assert timing is not None
    assert 0 < timing.prompt_seconds <= timing.time_to_first_token
    assert timing.tokens_per_second > 0


def test_cancel_token_stops_generation_and_says_so(tiny_llm: LlamaCPP) -> None:
    cancel = CancelToken()
    seen = 0

    def cancel_after_three(_ids: Any, logits: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen == 3:
            cancel.set()  # as another thread would, e.g. a UI's stop button
        return logits

    response = tiny_llm.complete(
        "Hello", max_new_tokens=50, cancel=cancel, logits_processor=cancel_after_three
    )
    assert response.finish_reason is FinishReason.CANCELLED
    assert response.usage is not None and response.usage.completion_tokens == 3
    assert not tiny_llm.loaded_model.lock.locked()


def test_a_stream_reports_figures_on_its_last_chunk_only(tiny_llm: LlamaCPP) -> None:
    chunks = list(tiny_llm.complete("Hello", stream=True, max_new_tokens=5))
    assert all(c.usage is None and c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.usage is not None and last.timing is not None and last.finish_reason is not None
    assert last.usage.completion_tokens == 5
    assert last.text == tiny_llm.complete("Hello", max_new_tokens=5).text


def test_async_chat_stream_reports_figures(tiny_llm: LlamaCPP) -> None:
    async def run() -> Any:
        stream = await tiny_llm.achat([Message.user("Hi")], stream=True, max_new_tokens=4)
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].finish_reason is FinishReason.LENGTH


def _chat_turns(llm: LlamaCPP, questions: Sequence[str], **kwargs: Any) -> list[Any]:
    messages: list[Message] = []
    responses = []
    for question in questions:
        messages.append(Message.user(question))
        response = llm.chat(messages, **kwargs)
        responses.append(response)
        messages.append(response.message)
    return responses


QUESTIONS = [
    f"question {word} of the user"
    for word in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
]


@pytest.mark.parametrize("formatter", ["llama2", "llama3", "chatml", "gemma"])
def test_each_turn_evaluates_only_what_is_new(tiny_model_path: Path, formatter: str) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter=formatter, temperature=0.0)
    llm.loaded_model.evaluated.clear()  # type: ignore[attr-defined]
    responses = _chat_turns(llm, QUESTIONS, max_new_tokens=6)
    for question, before, after in zip(QUESTIONS[1:], responses, responses[1:], strict=False):
        assert before.usage is not None and after.usage is not None
        # everything the previous turn evaluated: its prompt and its answer's tokens (all
        # but the last one, which was sampled but never needed to be evaluated) ...
        evaluated_before = before.usage.prompt_tokens + before.usage.completion_tokens - 1
        assert after.usage.cached_prompt_tokens >= evaluated_before, (
            formatter,
            before.usage,
            after.usage,
        )
        # ... so what is evaluated is about the size of the new question on its own (plus
        # the previous answer's last token and the template's end-of-turn markers)
        alone = llm.count_tokens(llm.format_messages([Message.user(question)]))
        assert after.usage.evaluated_prompt_tokens <= alone + 6, (formatter, after.usage, alone)
    assert responses[-1].usage.prompt_tokens > 150  # type: ignore[union-attr]


def test_generated_tokens_are_kept_even_where_retokenising_differs(tiny_llm: LlamaCPP) -> None:
    """The answer " h" is generated as two tokens ("▁", "h"); tokenising " h" gives one."""
    space, letter = token_with_piece(tiny_llm, b" "), token_with_piece(tiny_llm, b"h")
    assert plain_tokens(tiny_llm, " h") != [space, letter]
    tiny_llm.loaded_model.evaluated.clear()  # type: ignore[attr-defined]
    eos = tiny_llm.loaded_model.llama.token_eos()  # type: ignore[attr-defined]
    first = tiny_llm.chat(
        [Message.user("hello")], logits_processor=scripted([space, letter], then=eos)
    )
    assert first.message.content == " h"
    messages = [Message.user("hello"), first.message, Message.user("world")]
    second = tiny_llm.chat(messages, max_new_tokens=2)
    assert first.usage is not None and second.usage is not None
    assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens + 2
    # ... while matching token ids alone would have kept only the first prompt
    canonical = tiny_llm.tokenize(tiny_llm.format_messages(messages))
    prefix = tiny_llm.loaded_model.evaluated.tokens  # type: ignore[attr-defined]
    assert (
        canonical[: second.usage.cached_prompt_tokens]
        != prefix[: second.usage.cached_prompt_tokens]
    )


def test_reused_cache_gives_the_answer_a_fresh_evaluation_gives(tiny_llm: LlamaCPP) -> None:
    responses = _chat_turns(tiny_llm, QUESTIONS[:3], max_new_tokens=8)
    last = responses[-1]
    assert last.usage is not None and last.usage.cached_prompt_tokens > 0
    model = tiny_llm.loaded_model
    prompt = model.evaluated.tokens[: last.usage.prompt_tokens]  # type: ignore[attr-defined]
    llama = model.llama  # type: ignore[attr-defined]
    llama.reset()
    fresh = llama.create_completion(prompt, max_tokens=8, temperature=0.0)
    assert fresh["choices"][0]["text"] == last.message.content


def test_raw_calls_on_the_same_model_do_not_confuse_the_cache(tiny_llm: LlamaCPP) -> None:
    first = tiny_llm.complete("Hello there", max_new_tokens=4)
    llama = tiny_llm.loaded_model.llama  # type: ignore[attr-defined]
    llama.create_completion(
        tiny_llm.tokenize("something else entirely"), max_tokens=4, temperature=0.0
    )
    again = tiny_llm.complete("Hello there", max_new_tokens=4)
    assert again.text == first.text
    assert again.usage is not None and again.usage.cached_prompt_tokens <= 1  # only BOS is shared


def test_logprobs_per_request_without_logits_all(tiny_model_path: Path, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="serapeum.llama_cpp"):
        llm = LlamaCPP(
            model_path=str(tiny_model_path),
            formatter="llama2",
            temperature=0.0,
            model_kwargs={"logits_all": True, "n_batch": 64},
        )
    assert "logits_all=True is ignored" in caplog.text
    assert llm.loaded_model.llama._logits_all is False  # type: ignore[attr-defined]
    response = llm.complete("Hello", max_new_tokens=4, logprobs=3)
    logprobs = response.raw["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 4
    assert all(len(top) == 3 for top in logprobs["top_logprobs"])
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    # greedy: the chosen token is the most likely one
    assert all(
        lp == pytest.approx(max(top.values()))
        for lp, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    )
    assert llm.complete("Hello", max_new_tokens=4).raw["choices"][0]["logprobs"] is None


def test_same_text_as_raw_create_completion(tiny_llm: LlamaCPP) -> None:
    prompt = tiny_llm.tokenize(tiny_llm.format_completion("The first words"))
    ours = tiny_llm.complete("The first words", max_new_tokens=40, stop=["the"])
    llama = tiny_llm.loaded_model.llama  # type: ignore[attr-defined]
    llama.reset()
    raw = llama.create_completion(prompt, max_tokens=40, temperature=0.0, stop=["the", "</s>"])
    assert ours.text == raw["choices"][0]["text"]
    assert ours.finish_reason == raw["choices"][0]["finish_reason"]


def test_cancelled_before_the_first_token_gives_an_empty_cancelled_answer(
    tiny_llm: LlamaCPP,
) -> None:
    cancel = CancelToken()
    cancel.set()  # fires during prompt evaluation: llama.cpp's abort callback stops it
    response = tiny_llm.complete("Hello", max_new_tokens=20, cancel=cancel)
    assert response.text == ""
    assert response.finish_reason is FinishReason.CANCELLED
    assert response.usage is not None and response.usage.completion_tokens == 0
    # the aborted prompt left nothing behind: the next call evaluates it from scratch
    after = tiny_llm.complete("Hello", max_new_tokens=2)
    assert after.usage is not None and after.usage.cached_prompt_tokens == 0
    assert after.finish_reason is FinishReason.LENGTH


def test_a_callers_cancel_token_reaches_async_calls_and_is_unlinked_after(
    tiny_llm: LlamaCPP,
) -> None:
    cancel = CancelToken()

    async def run() -> list[Any]:
        results = [
            await tiny_llm.acomplete("Hi", max_new_tokens=2, cancel=cancel) for _ in range(3)
        ]
        async for chunk in await tiny_llm.acomplete(
            "Hi", stream=True, max_new_tokens=2, cancel=cancel
        ):
            results.append(chunk)
        return results

    results = asyncio.run(run())
    assert results[0].finish_reason is FinishReason.LENGTH
    assert cancel._callbacks == {}  # no link left behind per call

    async def cancelled_stream() -> Any:
        seen = 0

        def cancel_after_two(_ids: Any, logits: Any) -> Any:
            nonlocal seen
            seen += 1
            if seen == 2:
                cancel.set()
            return logits

        stream = await tiny_llm.acomplete(
            "Hi", stream=True, max_new_tokens=50, cancel=cancel, logits_processor=cancel_after_two
        )
        return [chunk async for chunk in stream][-1]

    last = asyncio.run(cancelled_stream())
    assert last.finish_reason is FinishReason.CANCELLED
    assert last.usage is not None and last.usage.completion_tokens == 2
