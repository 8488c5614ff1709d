"""What a model's KV cache holds, and how much of it a new prompt can keep.

The cache is kept as token ids, with the text they spell at token boundaries ("marks")
where it is known. A new prompt keeps the longest evaluated prefix that it shares,
either token for token or, when the prompt's text extends an earlier prompt plus the
answer generated for it, through the marks: the answer's own token ids are kept even
where tokenising the answer's text again would give different ids.

Chat templates rewrite the answer a little when they put it into the history: most trim
it (``{{ content | trim }}``), some put a space in front of it. Inside the last answer,
differences in whitespace alone are therefore not a mismatch: the model keeps the tokens
it generated, and only the text after the answer is evaluated.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

from attrs import define, field

__all__ = ["EvaluatedTokens", "PromptPlan", "common_prefix_length"]


def common_prefix_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common prefix (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n - 1  # a[:low] == b[:low] and a[:high + 1] != b[:high + 1]
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@define
class PromptPlan:
    """The tokens a request will occupy, and how many of them are evaluated already."""

    tokens: list[int]
    cached: int


@define
class EvaluatedTokens:
    """Token ids in the KV cache, with text marks: ``text[:chars[i]]`` spells ``tokens[:counts[i]]``."""

    tokens: list[int] = field(factory=list)
    text: str = ""
    chars: list[int] = field(factory=list)
    counts: list[int] = field(factory=list)
    answer_start: int | None = None  # where the last generated text begins in ``text``

    def clear(self) -> None:
        self.tokens = []
        self.forget_text()

    def forget_text(self) -> None:
        self.text = ""
        self.chars = []
        self.counts = []
        self.answer_start = None

    def _reusable_mark(self, prompt_text: str) -> tuple[int, int, int] | None:
        """The furthest mark the prompt agrees with: (tokens, chars in text, chars in prompt)."""
        text, chars = self.text, self.chars
        shared = common_prefix_length(text, prompt_text)
        index = bisect_right(chars, shared) - 1
        best = (self.counts[index], chars[index], chars[index]) if index >= 0 else None
        if self.answer_start is None or shared < self.answer_start:
            return best
        # Inside the last answer: step over whitespace that differs, keep matching.
        ours, theirs = shared, shared
        while ours < len(text):
            skip_ours, skip_theirs = _skip_space(text, ours), _skip_space(prompt_text, theirs)
            if skip_ours == ours and skip_theirs == theirs:
                break
            length = common_prefix_length(text[skip_ours:], prompt_text[skip_theirs:])
            ours, theirs = skip_ours + length, skip_theirs + length
            index = bisect_right(chars, ours) - 1
            if index >= 0 and chars[index] > skip_ours:
                best = (self.counts[index], chars[index], chars[index] + skip_theirs - skip_ours)
            if length == 0:
                break
        return best

    def plan(
        self,
        prompt_tokens: Sequence[int],
        prompt_text: str | None,
        tokenize_continuation: Callable[[str], list[int] | None],
        n_ctx: int | None = None,
    ) -> PromptPlan:
        """The prompt's tokens and how many of them can stay in the cache.

        At least the last prompt token is always evaluated again: sampling needs its logits.
        A kept answer spelled in more tokens than the context holds is not kept.
        """
        tokens = list(prompt_tokens)
        cached = common_prefix_length(self.tokens, tokens)
        if prompt_text and self.counts:
            mark = self._reusable_mark(prompt_text)
            if mark is not None and mark[0] > cached:
                mark_count, _, prompt_chars = mark
                rest = tokenize_continuation(prompt_text[prompt_chars:])
                if rest is not None:
                    tokens = self.tokens[:mark_count] + rest
                    cached = mark_count
        if n_ctx is not None and len(tokens) >= n_ctx:  # a re-used answer spelled longer: play safe
            return PromptPlan(tokens=list(prompt_tokens), cached=0)
        cached = min(cached, len(tokens) - 1)
        return PromptPlan(tokens=tokens, cached=max(cached, 0))

    def start(self, plan: PromptPlan, prompt_text: str | None) -> None:
        """The prompt is evaluated: keep the marks it still agrees with and add its own."""
        self.tokens = list(plan.tokens)
        if prompt_text is None:
            self.forget_text()
            return
        shared_chars = common_prefix_length(self.text, prompt_text)
        keep = 0
        while (
            keep < len(self.counts)
            and self.chars[keep] <= shared_chars
            and self.counts[keep] <= plan.cached
        ):
            keep += 1
        self.chars = [*self.chars[:keep], len(prompt_text)]
        self.counts = [*self.counts[:keep], len(plan.tokens)]
        self.text = prompt_text
        self.answer_start = None

    def extend(self, tokens: Sequence[int], text: str, marks: Sequence[tuple[int, int]]) -> None:
        """Generated tokens were evaluated; ``marks`` are (chars into ``text``, tokens) pairs."""
        base_chars, base_count = len(self.text), len(self.tokens)
        self.tokens.extend(tokens)
        if self.counts and self.counts[-1] == base_count:
            self.answer_start = base_chars
            self.text += text
            for chars, count in marks:
                self.chars.append(base_chars + chars)
                self.counts.append(base_count + count)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position
