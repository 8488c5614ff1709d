"""``LlamaCppModel``: one ``llama_cpp.Llama`` behind the ``LoadedModel`` protocol.

Each loaded model owns one ``ModelLock``; every call into llama.cpp for that model holds it.
"""

from __future__ import annotations

import ctypes
import random
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms.types import FinishReason
from serapeum.core.plugins import (
    BackendCapabilities,
    BackendChunk,
    BackendResult,
    ChunkStream,
    GenerationRequest,
    ModelInfo,
)
from serapeum.llama_cpp.backend.evaluated_tokens import EvaluatedTokens, PromptPlan
from serapeum.llama_cpp.backend.generation import DecodeError, Generation
from serapeum.llama_cpp.backend.model_lock import ModelLock
from serapeum.llama_cpp.backend.prompt_abort import PromptAbort
from serapeum.llama_cpp.backend.sampling import check_against_vocabulary, sampler_settings
from serapeum.llama_cpp.backend.scheduler import BatchScheduler, BatchSettings, Ticket
from serapeum.llama_cpp.backend.slot import SlotGeneration
from serapeum.llama_cpp.backend.structured import JsonConstraints
from serapeum.llama_cpp.backend.vocabulary import (
    model_info,
    space_after_special_pattern,
    special_token_texts,
    token_characters,
    vocab_type_spm,
)
from serapeum.llama_cpp.errors import ContextWindowExceededError, GenerationCancelled

# llama.cpp's SentencePiece tokenizer writes a character that no token contains as its
# bytes, growing its output by one exact reserve() per character: time quadratic in such
# bytes (a million NUL bytes take minutes on Gemma 3). A text this long is first counted
# for them, and refused without being tokenized when they alone overflow the context.
BYTE_FALLBACK_CHECK_CHARS = 50_000


class LlamaCppModel:
    """A ``llama_cpp.Llama`` behind the ``LoadedModel`` protocol."""

    def __init__(self, llama: Any, path: Path) -> None:
        self._llama = llama
        self._path = path
        self._bos = llama.token_bos()
        # Whether the model's tokenizer config asks for BOS at the start of a prompt.
        self._add_bos = bool(llama._model.add_bos_token())
        self._special_texts: set[str] | None = None
        self._space_after_special = space_after_special_pattern(llama, self._special_tokens)
        self._sentencepiece = llama._model.vocab_type() == vocab_type_spm()
        self._token_characters: frozenset[str] | None = None
        self._prompt_abort = PromptAbort(llama)
        self._info: ModelInfo | None = None
        self._vocab = llama._model.vocab
        self._n_vocab = int(llama.n_vocab())
        self._seeds = random.Random(llama._seed)
        self._newline_tokens = (
            llama.tokenize(b"\n", add_bos=False, special=True)
            if self._space_after_special is not None
            else []
        )
        self.pieces: dict[int, bytes] = {}
        self._logits_address: int | None = None
        self._logits_view: Any = None
        self.evaluated = EvaluatedTokens()
        self.constraints = JsonConstraints(self._vocab, self._n_vocab)
        self.lock = ModelLock(str(path))
        self._batching: BatchSettings | None = None
        self._scheduler: BatchScheduler | None = None

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (hold ``lock`` while using it)."""
        return self._llama

    @property
    def n_ctx(self) -> int:
        """One sequence's context (a batched model's context holds several)."""
        if self._batching is not None:
            return self._batching.n_ctx_seq
        return int(self._llama.n_ctx())

    def start_batching(self, settings: BatchSettings) -> None:
        """Serve requests through a batch scheduler (``n_parallel`` slots, sessions)."""
        self._batching = settings
        self._scheduler = BatchScheduler(self, settings)
        # Freed with its last user (the engine's cache holds models weakly): stop the loop.
        weakref.finalize(self, self._scheduler.close)

    @property
    def batching(self) -> BatchSettings | None:
        return self._batching

    @property
    def scheduler(self) -> BatchScheduler | None:
        return self._scheduler

    @property
    def info(self) -> ModelInfo:
        """Read once, on first use (scanning a large vocabulary takes a moment)."""
        if self._info is None:
            self._info = model_info(self._llama, self._special_tokens())
        return self._info

    def _special_tokens(self) -> set[str]:
        """The vocabulary's special-token texts, scanned once (large vocabularies take a moment)."""
        if self._special_texts is None:
            self._special_texts = special_token_texts(self._llama)
        return self._special_texts

    @property
    def name(self) -> str:
        return str(self._path)

    def tokenize(self, text: str) -> list[int]:
        """The prompt's tokens (BOS exactly once).

        Raises ``ContextWindowExceededError``, without tokenizing, for a text over
        ``BYTE_FALLBACK_CHECK_CHARS`` characters whose characters that no token contains
        (each one token per UTF-8 byte) alone outnumber the context and that many tokens.
        """
        if self._sentencepiece and len(text) > BYTE_FALLBACK_CHECK_CHARS:
            self._refuse_byte_fallback_overflow(text)
        # BOS exactly once: a formatter's prompt text may already start with it; add it
        # only when the model wants one and the text did not bring it.
        if self._space_after_special is not None:
            text = self._space_after_special.sub(r"\1", text)
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def _refuse_byte_fallback_overflow(self, text: str) -> None:
        if self._token_characters is None:
            self._token_characters = token_characters(self._llama)
        covered = self._token_characters
        tokens = sum(
            count * len(character.encode("utf-8", "surrogatepass"))
            for character, count in Counter(text).items()
            if character not in covered
        )
        n_ctx = self.n_ctx
        if tokens >= max(n_ctx, BYTE_FALLBACK_CHECK_CHARS):
            raise ContextWindowExceededError(
                f"the text is at least {tokens:,} tokens (characters this model's vocabulary "
                f"spells byte by byte) but the context window is {n_ctx:,} tokens; shorten it",
                prompt_tokens=tokens,
                context_window=n_ctx,
            )

    # -- the generation loop's view of the model ------------------------------------
    @property
    def vocab(self) -> Any:
        return self._vocab

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (control tokens give ``b""``), cached."""
        import llama_cpp as lib

        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if written >= 0:
                break
            size = -written
        piece = buffer.raw[:written]
        self.pieces[token] = piece
        return piece

    def last_logits(self) -> Any:
        """The logits of the last evaluated position, as a numpy view (no copy).

        The view is rebuilt only when llama.cpp moves its output buffer.
        """
        import numpy as np

        import llama_cpp as lib

        pointer = lib.llama_get_logits_ith(self._llama.ctx, -1)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if address != self._logits_address:
            self._logits_view = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
            self._logits_address = address
        return self._logits_view

    def next_seed(self, seed: int | None) -> int:
        """The request's seed, else the next of a sequence started from the model's seed."""
        if seed is not None:
            return seed
        return self._seeds.randint(0, 2**32 - 1)

    @property
    def capabilities(self) -> BackendCapabilities:
        if self._batching is not None:
            return _BATCHED
        return _SINGLE

    def start_structured_warmup(self) -> None:
        """Build llguidance's tokenizer bridge in the background, in steps while the process
        is idle, so the first ``json_schema=`` request finds it ready (``structured.py`` says
        how). It takes no lock on the model: it only reads the vocabulary.
        """
        self.constraints.start_warmup(keep_alive=self._llama)
        # A model freed without close() (the engine's cache holds models weakly) stops it too.
        weakref.finalize(self, self.constraints.close)

    def close(self) -> None:
        """Free llama.cpp's model and context (``Llama.close``); later calls fail."""
        self.constraints.close()  # the warm-up reads the vocabulary: stop it first
        if self._scheduler is not None:
            self._scheduler.close()
        self._llama.close()

    def check_options(self, request: GenerationRequest) -> None:
        """Raise ``ConfigurationError`` for options this backend cannot follow, before generation.

        A JSON Schema is compiled here (once per schema and model), so an invalid or
        unsatisfiable one fails now and the first constrained request pays no set-up.
        """
        if request.session is not None and self._batching is None:
            raise ConfigurationError(
                "session= needs a model loaded for sessions: give LlamaCPP max_sessions "
                "(e.g. max_sessions=8) or n_parallel > 1"
            )
        settings = sampler_settings(request.temperature, request.options)
        check_against_vocabulary(settings, self.n_vocab, self.constraints)

    def tokenize_continuation(self, text: str) -> list[int] | None:
        """Tokens of ``text`` as it continues a prompt, or None where that is not certain.

        llama.cpp's SentencePiece tokenizer puts a space in front of text that starts a
        prompt; a continuation must not get one. There the text is tokenised behind a
        newline whose tokens are then dropped, and only if they came out as the newline
        alone (a tokenizer that merged across the seam is not trusted).
        """
        if self._space_after_special is None:
            return self._llama.tokenize(text.encode(), add_bos=False, special=True)
        fixed = self._space_after_special.sub(r"\1", text)
        lead = self._newline_tokens
        tokens: list[int] = self._llama.tokenize(
            ("\n" + fixed).encode(), add_bos=False, special=True
        )
        if tokens[: len(lead)] != lead:
            return None
        return tokens[len(lead) :]

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        """Which prompt tokens to use and how many are already in the KV cache."""
        if not request.prompt_tokens:
            raise ConfigurationError("the prompt is empty: there is nothing to continue from")
        self._adopt_foreign_state()
        return self.evaluated.plan(
            request.prompt_tokens, request.prompt_text, self.tokenize_continuation, self.n_ctx
        )

    def _adopt_foreign_state(self) -> None:
        """Someone used ``llama`` directly (e.g. ``create_completion``): take its tokens."""
        llama, known = self._llama, self.evaluated.tokens
        n = llama.n_tokens
        if n != len(known) or (n and llama.input_ids[:n].tolist() != known):
            self.evaluated.clear()
            self.evaluated.tokens = llama.input_ids[:n].tolist()

    def evaluate_prompt(self, plan: PromptPlan, request: GenerationRequest) -> None:
        """Decode the prompt tokens that are not cached; cancellable while it runs."""
        import llama_cpp as lib

        llama, cached = self._llama, plan.cached
        if not llama._ctx.kv_cache_seq_rm(-1, cached, -1):
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            cached = plan.cached = 0
        self.evaluated.tokens = plan.tokens[:cached]
        self._sync_llama(cached)
        fresh = plan.tokens[cached:]
        step = int(llama.n_batch)
        if request.cancel is not None:
            self._prompt_abort.arm(request.cancel)
        try:
            for offset in range(0, len(fresh), step):
                chunk = fresh[offset : offset + step]
                cells = (lib.llama_token * len(chunk))(*chunk)
                batch = lib.llama_batch_get_one(cells, len(chunk))
                status = lib.llama_decode(llama.ctx, batch)
                if status == 2 and request.cancel is not None and request.cancel.is_set():
                    raise GenerationCancelled("cancelled while evaluating the prompt")
                if status:
                    raise DecodeError(f"llama_decode failed with status {status} on the prompt")
        except BaseException:
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            self.evaluated.clear()
            self._sync_llama(0)
            raise
        finally:
            self._prompt_abort.disarm()
        self.evaluated.start(plan, request.prompt_text)
        self._sync_llama(cached)

    def record_generation(self, tokens: list[int], text: str, marks: list[tuple[int, int]]) -> None:
        """The generated tokens now in the KV cache, with the text marks they spell."""
        text = text[: marks[-1][0]] if marks else ""
        before = len(self.evaluated.tokens)
        self.evaluated.extend(tokens, text, marks)
        self._sync_llama(before)

    def _sync_llama(self, unchanged: int) -> None:
        """Tell ``llama`` what its KV cache holds, so its own calls can reuse it too."""
        llama, tokens = self._llama, self.evaluated.tokens
        llama.input_ids[unchanged : len(tokens)] = tokens[unchanged:]
        llama.n_tokens = len(tokens)
        llama._requires_eval = True

    # -- requests ----------------------------------------------------------------------
    def complete(self, request: GenerationRequest) -> BackendResult:
        if self._scheduler is not None:
            return self._complete_batched(request, self._scheduler)
        started = time.perf_counter()
        generation = Generation(self, request, started)
        try:
            self.lock.acquire(request.cancel)
        except GenerationCancelled:  # cancelled while waiting for the model
            return BackendResult(text="", raw=None, finish_reason=FinishReason.CANCELLED)
        try:
            text = "".join(generation.text())
        finally:
            self.lock.release()
        return generation.result(text)

    def stream(self, request: GenerationRequest) -> ChunkStream:
        if self._scheduler is not None:
            yield from self._stream_batched(request, self._scheduler)
            return
        started = time.perf_counter()
        generation = Generation(self, request, started)
        try:
            self.lock.acquire(request.cancel)
        except GenerationCancelled:
            return  # cancelled while waiting for the model: nobody is listening
        try:
            pieces = generation.text()
            try:
                for delta in pieces:
                    yield BackendChunk(delta=delta, raw=generation.raw_chunk(delta))
            finally:
                pieces.close()
        finally:
            self.lock.release()
        yield generation.final_chunk()

    def _complete_batched(
        self, request: GenerationRequest, scheduler: BatchScheduler
    ) -> BackendResult:
        generation = SlotGeneration(self, request, time.perf_counter())
        ticket = Ticket(request, generation)
        scheduler.submit(ticket)
        try:
            text = "".join(ticket.texts())
        except BaseException:
            ticket.abandon()  # e.g. KeyboardInterrupt in this thread: free the slot
            raise
        return generation.result(text)

    def _stream_batched(self, request: GenerationRequest, scheduler: BatchScheduler) -> ChunkStream:
        generation = SlotGeneration(self, request, time.perf_counter())
        ticket = Ticket(request, generation)
        scheduler.submit(ticket)
        finished = False
        try:
            for delta in ticket.texts():
                yield BackendChunk(delta=delta, raw=generation.raw_chunk(delta))
            finished = True
        finally:
            if not finished:
                ticket.abandon()  # closed, broken out of, or failed: the slot is freed
                scheduler.wake()
        yield generation.final_chunk()


_SINGLE = BackendCapabilities(json_schema=True, grammar=True, logprobs=True)
_BATCHED = BackendCapabilities(
    json_schema=True, grammar=True, logprobs=True, concurrent=True, sessions=True
)
