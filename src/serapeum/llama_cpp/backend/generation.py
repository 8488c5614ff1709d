"""The built-in backend's own generation loop over llama.cpp's low-level API.

Per generated token the Python work is fixed: one ``llama_decode`` and one pick (numpy's
argmax for greedy, ``FastSampler`` for top-k sampling, else llama.cpp's sampler chain), a
dictionary lookup for the token's bytes, an incremental UTF-8 decode and a stop-sequence
check over a bounded tail. Nothing re-reads the completion so far, so a token costs the
same at position 1,000 as at position 1 (llama-cpp-python's ``create_completion``
re-detokenises and rescans the whole completion every token).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins import BackendChunk, BackendResult, GenerationRequest
from serapeum.llama_cpp.backend.evaluated_tokens import PromptPlan
from serapeum.llama_cpp.backend.fast_sampler import FastSampler, fast_path_applies
from serapeum.llama_cpp.backend.sampling import (
    SamplerSettings,
    build_sampler,
    check_against_vocabulary,
    sampler_settings,
)
from serapeum.llama_cpp.backend.structured import error_summary
from serapeum.llama_cpp.backend.text_stream import StopScanner, Utf8Assembler
from serapeum.llama_cpp.errors import (
    DecodeError,
    GenerationCancelled,
    IncompleteJSONError,
    SchemaError,
)

if TYPE_CHECKING:
    from serapeum.llama_cpp.backend.structured import JsonConstraints

__all__ = ["DecodeError", "Generation", "LoopModel"]


class LoopModel(Protocol):
    """What the loop needs of the loaded model (``LlamaCppModel`` is the one implementation).

    Declared here, so the loop depends on this contract and not on the model's module.
    """

    pieces: dict[int, bytes]
    constraints: JsonConstraints

    @property
    def llama(self) -> Any: ...
    @property
    def vocab(self) -> Any: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def name(self) -> str: ...

    def piece(self, token: int) -> bytes: ...
    def last_logits(self) -> Any: ...
    def next_seed(self, seed: int | None) -> int: ...
    def plan_prompt(self, request: GenerationRequest) -> PromptPlan: ...
    def evaluate_prompt(self, plan: PromptPlan, request: GenerationRequest) -> None: ...
    def record_generation(
        self, tokens: list[int], text: str, marks: list[tuple[int, int]]
    ) -> None: ...


# Below this vocabulary size llama.cpp's greedy sampler is as fast as numpy's argmax.
ARGMAX_MIN_VOCAB = 8192
# Below this one its sampler chain is as fast as the fast sampler, whose numpy calls cost
# about 25 µs whatever the size (warm caches, as when decoding runs on a GPU: 16k tokens
# 19 vs 31 µs, 32k 33 vs 28, 128k 112 vs 39). Right after a CPU decode every numpy call
# starts cold and that fixed cost is nearer 200 µs (Gemma's 262k: 260 vs 370), but there
# the decode takes tens of ms and either choice is noise.
FAST_SAMPLER_MIN_VOCAB = 32768


def _decode_error(status: int, n_ctx: int) -> DecodeError:
    if status == 1:
        return DecodeError(
            f"llama_decode found no room in the KV cache (context of {n_ctx} tokens); "
            "raise context_window or shorten the prompt"
        )
    return DecodeError(f"llama_decode failed with status {status}")


def _require_json(text: str, stopped_by_sequence: bool) -> None:
    """A constrained answer that finished must parse; never return one that does not."""
    try:
        json.loads(text)
    except ValueError as exc:
        cause = (
            "a stop sequence cut it short (remove that stop sequence)"
            if stopped_by_sequence
            else "the model ended it early"
        )
        raise IncompleteJSONError(
            f"the constrained answer is not valid JSON ({exc}): {cause}; it was {text[:200]!r}",
            text=text,
        ) from exc
    except RecursionError as exc:
        raise IncompleteJSONError(
            "the constrained answer is nested too deeply to parse", text=text
        ) from exc


class Generation:
    """One request on a loaded model. Iterate ``text()`` while holding the model's lock.

    Once the iterator is exhausted, ``finish_reason``, ``usage``, ``timing`` and
    ``logprobs`` describe what happened.
    """

    def __init__(self, model: LoopModel, request: GenerationRequest, started: float) -> None:
        self._model = model
        self._request = request
        self._started = started
        # Checked here, before the caller takes the model's lock (the backend's check_options
        # normally did it already; a compiled schema or grammar is cached, so this is cheap).
        self.settings: SamplerSettings = sampler_settings(request.temperature, request.options)
        check_against_vocabulary(self.settings, model.n_vocab, model.constraints)
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.timing: Timing | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self._matcher: Any = None
        self._mask: Any = None
        self._argmax = self.settings.plain_greedy and model.n_vocab >= ARGMAX_MIN_VOCAB
        self._fast = (
            not self._argmax
            and model.n_vocab >= FAST_SAMPLER_MIN_VOCAB
            and fast_path_applies(self.settings, model.n_vocab)
        )
        self._last_logits: Any = None
        self._fast_sampler: FastSampler | None = None
        self._sampler: Any = None
        self.id = f"cmpl-{uuid.uuid4()}"
        self.created = int(time.time())

    # -- raw dictionaries in create_completion's shape --------------------------------
    def raw_chunk(self, text: str, final: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "text": text,
            "index": 0,
            "logprobs": self.logprobs if final else None,
            "finish_reason": self.finish_reason.value if final and self.finish_reason else None,
        }
        raw: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self._model.name,
            "choices": [choice],
        }
        if final and self.usage is not None:
            raw["usage"] = {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            }
        return raw

    def result(self, text: str) -> BackendResult:
        """The whole answer with its figures (once generation ended)."""
        return BackendResult(
            text=text,
            raw=self.raw_chunk(text, final=True),
            usage=self.usage,
            timing=self.timing,
            finish_reason=self.finish_reason,
        )

    def final_chunk(self) -> BackendChunk:
        """A stream's last chunk: no text, the figures (once generation ended)."""
        return BackendChunk(
            delta="",
            raw=self.raw_chunk("", final=True),
            usage=self.usage,
            timing=self.timing,
            finish_reason=self.finish_reason,
        )

    # -- the loop ------------------------------------------------------------------------
    def text(self) -> Generator[str, None, None]:
        """Generate, yielding non-empty pieces of text as soon as they are final."""
        import llama_cpp as lib

        model, request, settings = self._model, self._request, self.settings
        llama = model.llama
        ctx, vocab, n_ctx = llama.ctx, model.vocab, model.n_ctx
        plan = model.plan_prompt(request)
        prompt_started = time.perf_counter()
        try:
            model.evaluate_prompt(plan, request)
        except GenerationCancelled:
            self.cancelled_before_first_token(plan, prompt_started)
            return
        prompt_done = time.perf_counter()

        sampler, fast, inspect = self.prepare_sampling(llama.last_n_tokens_size)
        decode, sample, is_eog = lib.llama_decode, lib.llama_sampler_sample, lib.llama_vocab_is_eog
        token_cell = (lib.llama_token * 1)()
        one_token = lib.llama_batch_get_one(token_cell, 1)
        pieces = model.pieces
        piece_of = model.piece
        utf8 = Utf8Assembler()
        stops = StopScanner(request.stop)
        scanning = stops.active
        cancel = request.cancel

        # Greedy over a large vocabulary: numpy's argmax of the logits (tens of µs) instead
        # of llama.cpp's sampler, which first copies all of them into candidates (hundreds).
        logits_of = model.last_logits
        argmax = self._argmax
        choose = fast.choose if fast is not None else None
        generated: list[int] = []
        raw_parts: list[str] = []
        shown: list[str] | None = [] if settings.json_schema is not None else None
        marks: list[tuple[int, int]] = []
        raw_chars = 0
        marking = True
        evaluated = 0  # generated tokens decoded into the KV cache
        limit = min(request.max_tokens, n_ctx - len(plan.tokens))
        finish = FinishReason.LENGTH
        stopped_by_sequence = False
        first_token_at = prompt_done
        token = -1
        try:
            for index in range(limit):
                if index:
                    token_cell[0] = token
                    status = decode(ctx, one_token)
                    if status:
                        raise _decode_error(status, n_ctx)
                    evaluated += 1
                if inspect:
                    token = self._sample_inspected(
                        sampler, generated, plan, raw_chars, logits_of(), -1
                    )
                elif argmax:
                    token = int(logits_of().argmax())
                elif choose is not None:
                    token = choose(logits_of())
                else:
                    token = sample(sampler, ctx, -1)
                if not index:
                    first_token_at = time.perf_counter()
                if is_eog(vocab, token):
                    finish = FinishReason.STOP
                    break
                generated.append(token)
                piece = pieces.get(token)
                if piece is None:
                    piece = piece_of(token)
                text = utf8.feed(piece)
                if text:
                    raw_parts.append(text)
                    raw_chars += len(text)
                    # an ASCII last byte cannot leave a character unfinished
                    if marking and (piece[-1] < 0x80 or not utf8.pending):
                        marks.append((raw_chars, len(generated)))
                    if scanning:
                        text, stopped_by_sequence = stops.push(text)
                        if text:
                            if shown is not None:
                                shown.append(text)
                            yield text
                        if stopped_by_sequence:
                            finish = FinishReason.STOP
                            break
                    else:
                        if shown is not None:
                            shown.append(text)
                        yield text
                elif not piece:  # a control token: its text is not in the answer
                    marking = False
                if inspect and self._stop_requested(generated, plan):
                    finish = FinishReason.STOP
                    break
                if cancel is not None and cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
            last_token_at = time.perf_counter()
            if not stopped_by_sequence:
                tail = utf8.flush()  # an unfinished character becomes U+FFFD
                if scanning:
                    tail, stopped_by_sequence = stops.push(tail)
                    if not stopped_by_sequence:
                        tail += stops.flush()
                if tail:
                    if shown is not None:
                        shown.append(tail)
                    yield tail
        finally:
            self.release_sampling()
            model.record_generation(
                generated[:evaluated],
                "".join(raw_parts),
                [mark for mark in marks if mark[1] <= evaluated],
            )
        self.conclude(
            finish,
            plan=plan,
            n_generated=len(generated),
            raw_text="".join(raw_parts),
            shown_text=None if shown is None else "".join(shown),
            stopped_by_sequence=stopped_by_sequence,
            times=(prompt_started, prompt_done, first_token_at, last_token_at),
        )

    def prepare_sampling(self, last_n: int) -> tuple[Any, FastSampler | None, bool]:
        """The native chain or fast sampler, the constraint matcher, and whether each pick
        needs the slow path (logprobs, processors, criteria, constraints); once, after the
        prompt is evaluated. Free the chain or sampler with ``release_sampling``."""
        model, settings = self._model, self.settings
        seed = model.next_seed(settings.seed)
        # Top-k sampling (and greedy with bias or penalties) over a large vocabulary: the
        # fast sampler (tens of µs) instead of llama.cpp's chain, which first copies every
        # logit into candidates (hundreds); same samplers, same distribution, same seed.
        fast: FastSampler | None = None
        sampler: Any = None
        if self._fast:
            fast = FastSampler(settings, n_vocab=model.n_vocab, seed=seed, last_n=last_n)
        else:
            sampler = build_sampler(
                settings, vocab=model.vocab, n_vocab=model.n_vocab, seed=seed, last_n=last_n
            )
        self._fast_sampler = fast
        self._sampler = sampler
        if settings.json_schema is not None:
            self._matcher = model.constraints.matcher(settings.json_schema)
        elif settings.grammar is not None:
            self._matcher = model.constraints.matcher(grammar=settings.grammar)
        inspect = (
            settings.logprobs is not None
            or settings.logits_processor is not None
            or settings.stopping_criteria is not None
            or self._matcher is not None
        )
        if inspect:
            self.logprobs = (
                {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
                if settings.logprobs is not None
                else None
            )
        return sampler, fast, inspect

    def release_sampling(self) -> None:
        """Free the native sampler chain or the fast sampler (idempotent)."""
        import llama_cpp as lib

        if self._fast_sampler is not None:
            self._fast_sampler.close()
            self._fast_sampler = None
        if self._sampler is not None:
            lib.llama_sampler_free(self._sampler)
            self._sampler = None

    def conclude(
        self,
        finish: FinishReason,
        *,
        plan: PromptPlan,
        n_generated: int,
        raw_text: str,
        shown_text: str | None,
        stopped_by_sequence: bool,
        times: tuple[float, float, float, float],
    ) -> None:
        """Check a constrained answer, then set ``finish_reason``, ``usage`` and ``timing``.

        ``times``: when the prompt started and finished evaluating, the first and the last
        token (``time.perf_counter()``).
        """
        prompt_started, prompt_done, first_token_at, last_token_at = times
        matcher = self._matcher
        if (
            finish is FinishReason.LENGTH
            and shown_text is not None
            and matcher is not None
            and not matcher.is_accepting()
        ):
            raise IncompleteJSONError(
                f"generation stopped after {n_generated} tokens (max_new_tokens="
                f"{self._request.max_tokens}, or the context window) before the JSON value was "
                "complete; raise max_new_tokens",
                text=raw_text,
            )
        if shown_text is not None and finish is not FinishReason.CANCELLED:
            _require_json(shown_text, stopped_by_sequence)
        self.finish_reason = finish
        self.usage = Usage(
            prompt_tokens=len(plan.tokens),
            completion_tokens=n_generated,
            cached_prompt_tokens=plan.cached,
        )
        generation_seconds = max(last_token_at - first_token_at, 0.0)
        self.timing = Timing(
            time_to_first_token=first_token_at - self._started,
            prompt_seconds=prompt_done - prompt_started,
            generation_seconds=generation_seconds,
            tokens_per_second=(n_generated - 1) / generation_seconds
            if n_generated > 1 and generation_seconds > 0
            else 0.0,
        )

    def cancelled_before_first_token(
        self, plan: PromptPlan, prompt_started: float, cached: int = 0
    ) -> None:
        """Cancelled before the first token: an empty answer that says so."""
        now = time.perf_counter()
        self.finish_reason = FinishReason.CANCELLED
        self.usage = Usage(
            prompt_tokens=len(plan.tokens), completion_tokens=0, cached_prompt_tokens=cached
        )
        self.timing = Timing(
            time_to_first_token=now - self._started,
            prompt_seconds=now - prompt_started,
            generation_seconds=0.0,
            tokens_per_second=0.0,
        )

    # -- the slow path: logprobs, logits processors, stopping criteria ---------------
    def _sample_inspected(
        self,
        sampler: Any,
        generated: list[int],
        plan: PromptPlan,
        text_offset: int,
        logits: Any,
        output: int,
    ) -> int:
        """Pick from ``logits`` (the row of batch output ``output``; -1: the last) with the
        processors, constraints and logprobs the request asks for."""
        import numpy as np

        import llama_cpp as lib

        model, settings = self._model, self.settings
        ctx = model.llama.ctx
        if settings.logits_processor is not None:
            input_ids = np.array(plan.tokens + generated, dtype=np.intc)
            scores = settings.logits_processor(input_ids, logits)
            try:
                if scores is None:
                    raise TypeError("None")
                logits[:] = scores
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"logits_processor must return the scores: an array of {model.n_vocab} "
                    f"numbers; it returned {type(scores).__name__} ({exc})"
                ) from exc

        fast = self._fast_sampler

        def pick() -> int:
            if self._argmax:
                return int(logits.argmax())
            if fast is not None:
                return fast.sample(logits)  # accepted below, once the pick is final
            return int(lib.llama_sampler_sample(sampler, ctx, output))

        token = pick()
        matcher = self._matcher
        if matcher is not None:
            if not matcher.validate_tokens([token]):
                # The model's pick breaks the schema: mask what the grammar forbids, pick again.
                self._mask_forbidden(matcher, logits)
                if matcher.is_error():  # llguidance gave up computing the mask (its limits)
                    raise self._cannot_continue(matcher, len(generated))
                token = pick()
            if not matcher.consume_token(token):
                # Nothing the vocabulary can write continues the text, or llguidance gave up
                # (e.g. its parser limits): the constraint cannot be followed any further.
                raise self._cannot_continue(matcher, len(generated))
        if fast is not None:
            fast.accept(token)
        if self.logprobs is not None:
            shifted = logits.astype(np.float64) - float(logits.max())
            log_probs = shifted - np.log(np.exp(shifted).sum())
            top = min(settings.logprobs or 0, log_probs.shape[0])
            if not top:
                best: Any = []
            elif top >= log_probs.shape[0]:
                best = np.arange(top)
            else:
                best = np.argpartition(-log_probs, top)[:top]
            self.logprobs["tokens"].append(model.piece(token).decode("utf-8", "replace"))
            self.logprobs["text_offset"].append(text_offset)
            self.logprobs["token_logprobs"].append(float(log_probs[token]))
            self.logprobs["top_logprobs"].append(
                {model.piece(int(t)).decode("utf-8", "replace"): float(log_probs[t]) for t in best}
            )
        self._last_logits = logits
        return token

    def _cannot_continue(self, matcher: Any, n_generated: int) -> SchemaError:
        what = "JSON Schema" if self.settings.json_schema is not None else "grammar"
        return SchemaError(
            f"generation cannot continue within the {what} after {n_generated} tokens: "
            f"{error_summary(matcher.get_error())}"
        )

    def _mask_forbidden(self, matcher: Any, logits: Any) -> None:
        import numpy as np

        n_vocab = self._model.n_vocab
        if self._mask is None:
            self._mask = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)
        mask = self._mask
        matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little", count=n_vocab)
        np.copyto(logits, -np.inf, where=allowed == 0)

    def _stop_requested(self, generated: list[int], plan: PromptPlan) -> bool:
        if self._matcher is not None and self._matcher.is_stopped():
            return True  # the JSON value is complete: nothing else may follow
        criteria = self.settings.stopping_criteria
        if criteria is None:
            return False
        import numpy as np

        input_ids = np.array(plan.tokens + generated, dtype=np.intc)
        return bool(criteria(input_ids, self._last_logits))
