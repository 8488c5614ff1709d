"""Timing of llama.cpp's native calls, the same for every contender.

``NativeProbe`` wraps ``llama_decode`` and ``llama_sampler_sample`` (in the ``llama_cpp``
package and in ``llama_cpp.llama_cpp``, where llama-cpp-python's own classes look them
up) and records when each call ran. Python time per generated token is the gap between
two one-token decodes minus the native sampler time inside the gap: everything a loop
does per token besides llama.cpp's own work. The wrappers cost the same for everyone.
"""

from __future__ import annotations

import statistics
import time
from types import TracebackType
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as low_level

DECODE, SAMPLE, LOGITS = 0, 1, 2


class NativeProbe:
    def __init__(self) -> None:
        self.events: list[tuple[int, float, float, int]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> NativeProbe:
        decode, sample = low_level.llama_decode, low_level.llama_sampler_sample
        logits = low_level.llama_get_logits_ith
        events, clock = self.events, time.perf_counter

        def timed_decode(ctx: Any, batch: Any) -> int:
            start = clock()
            status = decode(ctx, batch)
            events.append((DECODE, start, clock(), batch.n_tokens))
            return status

        def timed_sample(sampler: Any, ctx: Any, index: int) -> int:
            start = clock()
            token = sample(sampler, ctx, index)
            events.append((SAMPLE, start, clock(), 0))
            return token

        def timed_logits(ctx: Any, index: int) -> Any:
            start = clock()
            pointer = logits(ctx, index)
            events.append((LOGITS, start, clock(), 0))
            return pointer

        wrappers = (
            ("llama_decode", timed_decode),
            ("llama_sampler_sample", timed_sample),
            ("llama_get_logits_ith", timed_logits),
        )
        for module in (llama_cpp, low_level):
            for name, wrapper in wrappers:
                self._saved.append((module, name, getattr(module, name)))
                setattr(module, name, wrapper)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    def per_token(self) -> list[tuple[float, float]]:
        """Per generated token: (Python seconds, seconds besides ``llama_decode``).

        Both run from the end of one one-token decode to the start of the next; the first
        excludes llama.cpp's sampler calls, the second includes them (everything a loop
        spends per token besides evaluating the model).
        """
        gaps: list[tuple[float, float]] = []
        previous_end: float | None = None
        sampled = 0.0
        for kind, start, end, n_tokens in self.events:
            if kind == SAMPLE:
                sampled += end - start
                continue
            if kind == LOGITS:
                continue
            if n_tokens == 1 and previous_end is not None:
                gap = start - previous_end
                gaps.append((gap - sampled, gap))
            previous_end, sampled = end, 0.0
        return gaps

    def native_sampler_seconds(self) -> float | None:
        """Median duration of llama.cpp's sampler calls (None when none was made)."""
        samples = [end - start for kind, start, end, _ in self.events if kind == SAMPLE]
        return statistics.median(samples) if samples else None

    def prompt_seconds_per_call(self) -> list[tuple[float, int]]:
        """Per generation: the time and tokens of the decodes that ran before its first sample."""
        calls: list[tuple[float, int]] = []
        seconds, tokens, sampling = 0.0, 0, False
        for kind, start, end, n_tokens in self.events:
            if kind in (SAMPLE, LOGITS):  # a token is being picked: the prompt is done
                if not sampling:
                    calls.append((seconds, tokens))
                    seconds, tokens = 0.0, 0
                sampling = True
            elif sampling and n_tokens == 1:
                continue  # a generated token
            else:
                if sampling:
                    sampling = False
                seconds += end - start
                tokens += n_tokens
        return calls
