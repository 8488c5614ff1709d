"""The built-in ``llama-cpp`` backend: llama-cpp-python, in this process.

Registered through the ``serapeum`` entry-point group like any other plugin. Each
loaded model owns one ``ModelLock``; every call into llama.cpp for that model holds it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import ConfigurationError
from serapeum.core.gguf import check_gguf
from serapeum.core.llms.types import FinishReason
from serapeum.core.plugins import (
    BackendChunk,
    BackendResult,
    BackendSpec,
    GenerationRequest,
    ModelInfo,
    hookimpl,
)
from serapeum.llama_cpp import native_log
from serapeum.llama_cpp.errors import (
    ContextWindowExceededError,
    GenerationCancelled,
    ModelLoadError,
)
from serapeum.llama_cpp.evaluated_tokens import EvaluatedTokens, PromptPlan
from serapeum.llama_cpp.generation import DecodeError, Generation
from serapeum.llama_cpp.llama_loader import CHAT_TEMPLATE_KEY, chat_templates_of, new_llama
from serapeum.llama_cpp.model_lock import ModelLock
from serapeum.llama_cpp.sampling import check_against_vocabulary, sampler_settings
from serapeum.llama_cpp.structured import JsonConstraints

BACKEND_NAME = "llama-cpp"
logger = logging.getLogger("serapeum.llama_cpp")

# llama.cpp's SentencePiece tokenizer writes a character that no token contains as its
# bytes, growing its output by one exact reserve() per character: time quadratic in such
# bytes (a million NUL bytes take minutes on Gemma 3). A text this long is first counted
# for them, and refused without being tokenized when they alone overflow the context.
BYTE_FALLBACK_CHECK_CHARS = 50_000


def _c_flag_reader() -> Any:
    """A native function that reports, without Python, whether a 2-byte flag is raised.

    llama.cpp calls its abort callback after every graph node; a Python callback would
    need the GIL each time (and wait for it whenever another thread runs Python). libc's
    ``strlen`` on a buffer we own, ``b"\\0\\0"`` or ``b"\\1\\0"``, returns 0 or 1: exactly
    the ``bool (*)(void *)`` that llama.cpp wants, answered in native code.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return libc.strlen
    except (OSError, AttributeError):  # pragma: no cover - platforms without a C library
        return None


class _PromptAbort:
    """Lets a request's cancel token interrupt llama.cpp while it evaluates the prompt.

    Armed only for cancellable requests and disarmed at the first generated token, from
    where the per-token stopping check takes over.
    """

    def __init__(self, llama: Any) -> None:
        import ctypes

        import llama_cpp

        self._set_callback = llama_cpp.llama_set_abort_callback
        self._ctx = llama.ctx
        self._flag = ctypes.create_string_buffer(2)
        self._flag_address = ctypes.cast(self._flag, ctypes.c_void_p)
        reader = _c_flag_reader()
        self._callback = (
            ctypes.cast(reader, llama_cpp.ggml_abort_callback) if reader is not None else None
        )
        self._no_callback = llama_cpp.ggml_abort_callback(0)
        self._undo: Any = None

    def _raise_flag(self) -> None:
        self._flag[0] = b"\x01"

    def arm(self, cancel: CancelToken) -> None:
        if self._callback is None:
            return
        self._flag[0] = b"\x00"
        self._undo = cancel.on_set(self._raise_flag)
        self._set_callback(self._ctx, self._callback, self._flag_address)

    def disarm(self) -> None:
        if self._undo is not None:
            self._set_callback(self._ctx, self._no_callback, None)
            self._undo()
            self._undo = None


def _special_token_texts(llama: Any) -> set[str]:
    """Texts of the control and user-defined tokens: the ones prompts use as markers."""
    import llama_cpp

    special = (
        llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    )
    vocab, n_vocab = llama._model.vocab, llama._model.n_vocab()
    texts = {
        _token_text(vocab, token)
        for token in range(n_vocab)
        if llama_cpp.llama_vocab_get_attr(vocab, token) & special
    }
    texts.discard("")
    return texts


def _token_text(vocab: Any, token: int) -> str:
    """A token's text; invalid UTF-8 in a vocabulary becomes U+FFFD, never an exception."""
    import llama_cpp

    if token < 0:
        return ""
    raw = llama_cpp.llama_vocab_get_text(vocab, token)
    return raw.decode("utf-8", errors="replace") if raw else ""


def _vocab_type_spm() -> int:
    import llama_cpp

    return int(llama_cpp.LLAMA_VOCAB_TYPE_SPM)


def _token_characters(llama: Any) -> frozenset[str]:
    """Every character some token's text contains (SentencePiece writes spaces as U+2581)."""
    import llama_cpp

    vocab, n_vocab = llama._model.vocab, llama._model.n_vocab()
    characters: set[str] = set()
    for token in range(n_vocab):
        raw = llama_cpp.llama_vocab_get_text(vocab, token)
        if raw:
            characters.update(raw.decode("utf-8", errors="replace"))
    if "\u2581" in characters:
        characters.add(" ")
    return frozenset(characters)


def _model_info(llama: Any, special_tokens: set[str]) -> ModelInfo:
    model = llama._model
    vocab = model.vocab
    metadata = {**llama.metadata, **chat_templates_of(llama)}
    return ModelInfo(
        architecture=metadata.get("general.architecture", ""),
        name=metadata.get("general.name", ""),
        chat_template=metadata.get(CHAT_TEMPLATE_KEY) or None,
        bos_token=_token_text(vocab, llama.token_bos()),
        eos_token=_token_text(vocab, llama.token_eos()),
        eot_token=_token_text(vocab, model.token_eot()),
        special_tokens=tuple(sorted(special_tokens)),
        metadata=metadata,
    )


def _space_after_special_pattern(
    llama: Any, special_tokens: Callable[[], set[str]]
) -> re.Pattern[str] | None:
    """For SentencePiece vocabularies: a special token's text followed by one space.

    llama.cpp's SentencePiece tokenizer puts a space before the text that follows a special
    token (the "legacy" behaviour), so ``"<s> [INST]"`` becomes ``<s> ▁ ▁[INST]`` while the
    family's reference tokenizer (e.g. mistral-common) gives ``<s> ▁[INST]``. Dropping the
    one space that the template wrote there makes llama.cpp produce the reference ids.
    """
    import llama_cpp

    model = llama._model
    if model.vocab_type() != llama_cpp.LLAMA_VOCAB_TYPE_SPM:
        return None
    if str(llama.metadata.get("tokenizer.ggml.add_space_prefix", "true")).lower() == "false":
        return None
    texts = special_tokens()
    if not texts:
        return None
    # Longest first, and atomic: where a longer special token matches, a shorter one that
    # is its prefix must not (llama.cpp partitions the text the same way).
    alternatives = "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))
    return re.compile(f"((?>{alternatives})) ")


class LlamaCppModel:
    """A ``llama_cpp.Llama`` behind the ``LoadedModel`` protocol."""

    def __init__(self, llama: Any, path: Path) -> None:
        self._llama = llama
        self._path = path
        self._bos = llama.token_bos()
        # Whether the model's tokenizer config asks for BOS at the start of a prompt.
        self._add_bos = bool(llama._model.add_bos_token())
        self._special_texts: set[str] | None = None
        self._space_after_special = _space_after_special_pattern(llama, self._special_tokens)
        self._sentencepiece = llama._model.vocab_type() == _vocab_type_spm()
        self._token_characters: frozenset[str] | None = None
        self._prompt_abort = _PromptAbort(llama)
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

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (hold ``lock`` while using it)."""
        return self._llama

    @property
    def n_ctx(self) -> int:
        return int(self._llama.n_ctx())

    @property
    def info(self) -> ModelInfo:
        """Read once, on first use (scanning a large vocabulary takes a moment)."""
        if self._info is None:
            self._info = _model_info(self._llama, self._special_tokens())
        return self._info

    def _special_tokens(self) -> set[str]:
        """The vocabulary's special-token texts, scanned once (large vocabularies take a moment)."""
        if self._special_texts is None:
            self._special_texts = _special_token_texts(self._llama)
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
            self._token_characters = _token_characters(self._llama)
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

    supports_json_schema = True

    def check_options(self, request: GenerationRequest) -> None:
        """Raise ``ConfigurationError`` for options this backend cannot follow, before generation.

        A JSON Schema is compiled here (once per schema and model), so an invalid or
        unsatisfiable one fails now and the first constrained request pays no set-up.
        """
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
        plan = self.evaluated.plan(
            request.prompt_tokens, request.prompt_text, self.tokenize_continuation
        )
        if len(plan.tokens) >= self.n_ctx:  # a re-used answer spelled longer: play safe
            plan = PromptPlan(tokens=list(request.prompt_tokens), cached=0)
        return plan

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
        return BackendResult(
            text=text,
            raw=generation.raw_chunk(text, final=True),
            usage=generation.usage,
            timing=generation.timing,
            finish_reason=generation.finish_reason,
        )

    def stream(self, request: GenerationRequest) -> Iterator[BackendChunk]:
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
        yield BackendChunk(
            delta="",
            raw=generation.raw_chunk("", final=True),
            usage=generation.usage,
            timing=generation.timing,
            finish_reason=generation.finish_reason,
        )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the whole machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return os.cpu_count() or 1


def _load_lora(llama: Any, lora_path: str, scale: float) -> None:
    """Apply a LoRA adapter as ``Llama(lora_path=...)`` would, without its crash.

    llama-cpp-python 0.3 tests the adapter pointer llama.cpp returns with ``is None``; a
    ctypes pointer never is, so an adapter that fails to load (a missing file, a file that
    is not an adapter for this model) reaches llama.cpp as NULL and the process dies with
    SIGSEGV. The file gets the GGUF structure check first (which also refuses FIFOs and
    devices without blocking), and a NULL adapter is a ``ModelLoadError``. llama.cpp frees
    adapters with their model.
    """
    import llama_cpp

    check_gguf(lora_path)
    adapter = llama_cpp.llama_adapter_lora_init(llama._model.model, os.fsencode(lora_path))
    if not adapter:
        raise ModelLoadError(
            f"llama.cpp could not load the LoRA adapter {lora_path!r}: it is not a LoRA "
            "adapter GGUF for this model's architecture, or its tensors do not match the "
            "model's (run with verbose=True to see llama.cpp's reason)"
        )
    llama._lora_adapter = adapter
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    if llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, adapters, 1, scales):
        raise ModelLoadError(f"llama.cpp could not apply the LoRA adapter {lora_path!r}")


def load_model(path: Path, options: Mapping[str, Any]) -> LlamaCppModel:
    """Load ``path`` with ``llama_cpp.Llama(**options)``."""
    options = dict(options)
    lora_path = options.pop("lora_path", None)
    lora_scale = float(options.pop("lora_scale", 1.0))
    n_ctx = options.get("n_ctx")
    if isinstance(n_ctx, int) and n_ctx > 0 and options.get("n_batch", 0) > n_ctx:
        # What llama-cpp-python does itself, except for the array of logits it sizes with
        # the n_batch given (n_batch x vocabulary floats: 2**31 - 1 is a MemoryError).
        options["n_batch"] = n_ctx
    if options.pop("logits_all", False):
        logger.warning(
            "logits_all=True is ignored: it makes every prompt 2-3x slower to evaluate and "
            "holds n_ctx x vocabulary floats; ask for logprobs per request instead "
            "(complete(..., logprobs=5))"
        )
    # llama-cpp-python generates with half the CPUs by default; on small machines that
    # leaves a core idle (Gemma 3 270M on 2 cores: 41 ms a token with 1 thread, 24 with 2).
    options.setdefault("n_threads", usable_cpus())
    options.setdefault("n_threads_batch", usable_cpus())
    native_log.install()
    try:
        llama = new_llama(path, options)
    except MemoryError as exc:
        raise ModelLoadError(
            f"not enough memory to load {str(path)!r} with these options (n_ctx, n_batch); "
            "lower them"
        ) from exc
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {str(path)!r}: {exc}. The file has the GGUF header; it "
            "may be truncated, or use an architecture or quantisation this llama-cpp-python "
            "version does not support (run with verbose=True to see llama.cpp's log)"
        ) from exc
    if lora_path is not None:
        try:
            _load_lora(llama, lora_path, lora_scale)
        except BaseException:
            llama.close()
            raise
    return LlamaCppModel(llama, path)


LLAMA_CPP_BACKEND = BackendSpec(
    name=BACKEND_NAME,
    load=load_model,
    description="llama-cpp-python in this process",
)


@hookimpl
def serapeum_register_backends() -> list[BackendSpec]:
    return [LLAMA_CPP_BACKEND]
