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

DECODE, SAMPLE = 0, 1


class NativeProbe:
    def __init__(self) -> None:
        self.events: list[tuple[int, float, float, int]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> NativeProbe:
        decode, sample = low_level.llama_decode, low_level.llama_sampler_sample
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

        for module in (llama_cpp, low_level):
            for name, wrapper in (
                ("llama_decode", timed_decode),
                ("llama_sampler_sample", timed_sample),
            ):
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

    def python_per_token(self) -> list[float]:
        """Seconds of non-native work between consecutive one-token decodes."""
        gaps: list[float] = []
        previous_end: float | None = None
        sampled = 0.0
        for kind, start, end, n_tokens in self.events:
            if kind == SAMPLE:
                sampled += end - start
                continue
            if n_tokens == 1 and previous_end is not None:
                gaps.append(start - previous_end - sampled)
            previous_end, sampled = end, 0.0
        return gaps

    def native_sampler_seconds(self) -> float:
        return statistics.median(
            end - start for kind, start, end, _ in self.events if kind == SAMPLE
        )

    def prompt_seconds_per_call(self) -> list[tuple[float, int]]:
        """Per generation: the time and tokens of the decodes that ran before its first sample."""
        calls: list[tuple[float, int]] = []
        seconds, tokens, sampling = 0.0, 0, False
        for kind, start, end, n_tokens in self.events:
            if kind == SAMPLE:
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
