"""Unit tests of the generation loop's pure parts: text assembly, stop scanning, turn reuse."""

from __future__ import annotations

import pytest

from serapeum.llama_cpp.backend.evaluated_tokens import (
    EvaluatedTokens,
    PromptPlan,
    common_prefix_length,
)
from serapeum.llama_cpp.backend.text_stream import StopScanner, Utf8Assembler


def test_a_character_split_over_four_pieces_comes_out_once_whole() -> None:
    utf8 = Utf8Assembler()
    emoji = "🦙".encode()
    outputs = [utf8.feed(emoji[i : i + 1]) for i in range(4)]
    assert outputs == ["", "", "", "🦙"]
    assert not utf8.pending and utf8.flush() == ""


def test_pending_bytes_are_reported_and_replaced_at_the_end() -> None:
    utf8 = Utf8Assembler()
    assert utf8.feed(b"ok\xc3") == "ok"
    assert utf8.pending
    assert utf8.flush() == "\ufffd"


def test_stop_split_over_pushes_is_held_back_then_cut() -> None:
    scanner = StopScanner(["</answer>"])
    assert scanner.push("The result</") == ("The result", False)
    assert scanner.push("ans") == ("", False)
    assert scanner.push("wer> and more") == ("", True)


def test_text_that_only_looked_like_a_stop_is_released() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.push("go ST") == ("go ", False)
    assert scanner.push("ILL here") == ("STILL here", False)
    assert scanner.push(" S") == (" ", False)
    assert scanner.flush() == "S"


def test_the_earliest_stop_wins_and_duplicates_and_empties_are_ignored() -> None:
    scanner = StopScanner(["world", "", "lo w", "world"])
    assert scanner.push("hello world") == ("hel", True)


def test_no_stops_means_no_holding_back() -> None:
    scanner = StopScanner([])
    assert not scanner.active
    assert scanner.push("anything <") == ("anything <", False)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("", "abc", 0), ("abc", "abc", 3), ("abcd", "abxd", 2), ([1, 2, 3], [1, 2], 2), ("x", "y", 0)],
)
def test_common_prefix_length(a: str, b: str, expected: int) -> None:
    assert common_prefix_length(a, b) == expected


def _after_turn(
    prompt: str, prompt_tokens: list[int], answer: list[tuple[str, int]]
) -> EvaluatedTokens:
    """A cache holding ``prompt`` and an answer given as (piece text, token id) pairs."""
    cache = EvaluatedTokens()
    cache.start(PromptPlan(tokens=prompt_tokens, cached=0), prompt)
    text, marks = "", []
    for count, (piece, _token) in enumerate(answer, start=1):
        text += piece
        marks.append((len(text), count))
    cache.extend([token for _, token in answer], text, marks)
    return cache


def _letters(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_a_trimmed_answer_keeps_its_generated_tokens() -> None:
    cache = _after_turn("Q:", [1, 2], [(" Par", 100), ("is", 101)])
    prompt = "Q:Paris<end>Q2:"  # the template trimmed the answer's leading space
    plan = cache.plan(_letters(prompt), prompt, _letters)
    assert plan.cached == 4  # the prompt and both answer tokens
    assert plan.tokens == [1, 2, 100, 101, *_letters("<end>Q2:")]


def test_a_padded_answer_keeps_its_generated_tokens() -> None:
    cache = _after_turn("[/INST]", [1, 2], [("Hi", 100), (" there", 101)])
    prompt = "[/INST] Hi there </s>[INST] next [/INST]"
    plan = cache.plan(_letters(prompt), prompt, _letters)
    assert plan.cached == 4
    assert plan.tokens[4:] == _letters(" </s>[INST] next [/INST]")


def test_a_changed_answer_keeps_only_what_still_matches() -> None:
    cache = _after_turn("Q:", [1, 2], [(" Par", 100), ("is", 101)])
    prompt = "Q: Parme"
    plan = cache.plan(_letters(prompt), prompt, _letters)
    assert plan.cached == 3  # prompt + " Par"
    assert plan.tokens == [1, 2, 100, *_letters("me")]


def test_whitespace_outside_the_answer_is_not_forgiven() -> None:
    cache = _after_turn("Q: a  b", [1, 2, 3], [(" x", 100)])
    prompt = "Q: a b x"
    plan = cache.plan(_letters(prompt), prompt, _letters)
    assert plan.cached < 3


def test_an_untrusted_continuation_falls_back_to_token_matching() -> None:
    cache = _after_turn("Q:", [1, 2], [(" Par", 100), ("is", 101)])
    prompt = "Q: Paris!"
    plan = cache.plan([1, 2, 7, 8], prompt, lambda _text: None)
    assert plan == PromptPlan(tokens=[1, 2, 7, 8], cached=2)


def test_the_last_prompt_token_is_always_evaluated_again() -> None:
    cache = _after_turn("Q:", [1, 2], [])
    plan = cache.plan([1, 2], "Q:", _letters)
    assert plan.cached == 1
