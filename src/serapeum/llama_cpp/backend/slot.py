"""One request inside a batch: ``Generation``'s loop body, one token at a time.

The scheduler decodes every active sequence in one ``llama_decode`` and then asks each
request's ``SlotGeneration`` to pick from its own row of logits and to take the token:
sampling state, UTF-8 assembly, stop sequences, constraints and figures stay per request,
exactly as the single-sequence loop keeps them.
"""

from __future__ import annotations

import time
from typing import Any

from serapeum.core.llms.types import FinishReason
from serapeum.core.plugins import GenerationRequest
from serapeum.llama_cpp.backend.evaluated_tokens import PromptPlan
from serapeum.llama_cpp.backend.generation import Generation, LoopModel
from serapeum.llama_cpp.backend.text_stream import StopScanner, Utf8Assembler

__all__ = ["SlotGeneration"]


class SlotGeneration(Generation):
    """A request driven by the batch scheduler: ``begin``, then ``pick``/``take`` per
    token until ``done``, then ``end``."""

    def __init__(self, model: LoopModel, request: GenerationRequest, started: float) -> None:
        super().__init__(model, request, started)
        self.done = False
        self.generated: list[int] = []
        self.plan = PromptPlan(tokens=[], cached=0)

    def begin(self, plan: PromptPlan, last_n: int, prompt_started: float) -> None:
        """The prompt is evaluated: set up sampling (the first pick follows)."""
        self.plan = plan
        self._prompt_started = prompt_started
        self._prompt_done = self._first_token_at = time.perf_counter()
        self._chain, self._fast_choice, self._inspect = self.prepare_sampling(last_n)
        self._utf8 = Utf8Assembler()
        self._stops = StopScanner(self._request.stop)
        self._raw_parts: list[str] = []
        self._shown: list[str] | None = [] if self.settings.json_schema is not None else None
        self.marks: list[tuple[int, int]] = []
        self._raw_chars = 0
        self._marking = True
        self._picks = 0
        self._finish = FinishReason.LENGTH
        self._stopped_by_sequence = False
        self._limit = min(self._request.max_tokens, self._model.n_ctx - len(plan.tokens))
        if self._limit <= 0:
            self.done = True

    def pick(self, output: int, logits: Any) -> int:
        """The next token from ``logits`` (this request's row, batch output ``output``)."""
        if self._inspect:
            return self._sample_inspected(
                self._chain, self.generated, self.plan, self._raw_chars, logits, output
            )
        if self._argmax:
            return int(logits.argmax())
        if self._fast_choice is not None:
            return int(self._fast_choice.choose(logits))
        import llama_cpp as lib

        return int(lib.llama_sampler_sample(self._chain, self._model.llama.ctx, output))

    def take(self, token: int, is_eog: bool) -> str:
        """Take the picked token; returns the text it makes final ("" if none)."""
        if not self._picks:
            self._first_token_at = time.perf_counter()
        self._picks += 1
        if is_eog:
            self._finish = FinishReason.STOP
            self.done = True
            return ""
        generated = self.generated
        generated.append(token)
        model = self._model
        piece = model.pieces.get(token)
        if piece is None:
            piece = model.piece(token)
        text = self._utf8.feed(piece)
        shown = self._shown
        if text:
            self._raw_parts.append(text)
            self._raw_chars += len(text)
            if self._marking and (piece[-1] < 0x80 or not self._utf8.pending):
                self.marks.append((self._raw_chars, len(generated)))
            if self._stops.active:
                text, self._stopped_by_sequence = self._stops.push(text)
                if self._stopped_by_sequence:
                    self._finish = FinishReason.STOP
                    self.done = True
            if text and shown is not None:
                shown.append(text)
        elif not piece:  # a control token: its text is not in the answer
            self._marking = False
        if not self.done:
            if self._inspect and self._stop_requested(generated, self.plan):
                self._finish = FinishReason.STOP
                self.done = True
            elif self._picks >= self._limit:
                self.done = True
        return text

    def cancel(self) -> None:
        self._finish = FinishReason.CANCELLED
        self.done = True

    @property
    def raw_text(self) -> str:
        return "".join(self._raw_parts)

    def end(self) -> str:
        """The text still held back (an unfinished character, a possible stop's start)."""
        self._last_token_at = time.perf_counter()
        if self._stopped_by_sequence:
            return ""
        tail = self._utf8.flush()  # an unfinished character becomes U+FFFD
        if self._stops.active:
            tail, self._stopped_by_sequence = self._stops.push(tail)
            if not self._stopped_by_sequence:
                tail += self._stops.flush()
        if tail and self._shown is not None:
            self._shown.append(tail)
        return tail

    def conclude_batched(self) -> None:
        """Figures and the constrained answer's checks (``IncompleteJSONError``)."""
        self.conclude(
            self._finish,
            plan=self.plan,
            n_generated=len(self.generated),
            raw_text=self.raw_text,
            shown_text=None if self._shown is None else "".join(self._shown),
            stopped_by_sequence=self._stopped_by_sequence,
            times=(
                self._prompt_started,
                self._prompt_done,
                self._first_token_at,
                self._last_token_at,
            ),
        )
