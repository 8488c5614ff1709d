"""The built-in ``llama-cpp`` backend: llama-cpp-python, in this process.

Registered through the ``serapeum`` entry-point group like any other plugin. Each
loaded model owns one ``ModelLock``; every call into llama.cpp for that model holds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from serapeum.core.cancellation import CancelToken
from serapeum.core.plugins import (
    BackendChunk,
    BackendResult,
    BackendSpec,
    GenerationRequest,
    ModelInfo,
    hookimpl,
)
from serapeum.llama_cpp import native_log
from serapeum.llama_cpp.errors import GenerationCancelled, ModelLoadError
from serapeum.llama_cpp.model_lock import ModelLock

BACKEND_NAME = "llama-cpp"


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


def _is_abort(exc: BaseException, request: GenerationRequest) -> bool:
    """llama-cpp-python reports an aborted decode as ``RuntimeError('llama_decode returned 2')``."""
    return (
        request.cancel is not None
        and request.cancel.is_set()
        and isinstance(exc, RuntimeError)
        and str(exc).endswith("returned 2")
    )


def _special_token_texts(llama: Any) -> set[str]:
    """Texts of the control and user-defined tokens: the ones prompts use as markers."""
    import llama_cpp

    model = llama._model
    special = (
        llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    )
    texts = {
        model.token_get_text(token)
        for token in range(model.n_vocab())
        if model.token_get_attr(token) & special
    }
    texts.discard("")
    return texts


def _model_info(llama: Any, special_tokens: set[str]) -> ModelInfo:
    model = llama._model

    def text_of(token: int) -> str:
        return model.token_get_text(token) if token >= 0 else ""

    metadata = dict(llama.metadata)
    return ModelInfo(
        architecture=metadata.get("general.architecture", ""),
        name=metadata.get("general.name", ""),
        chat_template=metadata.get("tokenizer.chat_template") or None,
        bos_token=text_of(llama.token_bos()),
        eos_token=text_of(llama.token_eos()),
        eot_token=text_of(model.token_eot()),
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
        self._prompt_abort = _PromptAbort(llama)
        self._info: ModelInfo | None = None
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
        # BOS exactly once: a formatter's prompt text may already start with it; add it
        # only when the model wants one and the text did not bring it.
        if self._space_after_special is not None:
            text = self._space_after_special.sub(r"\1", text)
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def _arguments(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        arguments = dict(request.options)
        arguments.update(
            prompt=list(request.prompt_tokens),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=list(request.stop),
            stream=stream,
        )
        if request.cancel is not None:
            from llama_cpp import StoppingCriteriaList

            cancel, disarm = request.cancel, self._prompt_abort.disarm

            def cancelled(_input_ids: Any, _logits: Any) -> bool:
                disarm()  # the prompt is evaluated: per-token checks from here on
                return cancel.is_set()

            criteria = StoppingCriteriaList(arguments.get("stopping_criteria") or [])
            criteria.append(cancelled)
            arguments["stopping_criteria"] = criteria
        return arguments

    def complete(self, request: GenerationRequest) -> BackendResult:
        arguments = self._arguments(request, stream=False)
        self.lock.acquire(request.cancel)
        try:
            if request.cancel is not None:
                self._prompt_abort.arm(request.cancel)
            raw = self._llama.create_completion(**arguments)
        except Exception as exc:
            if _is_abort(exc, request):
                raise GenerationCancelled("cancelled while evaluating the prompt") from exc
            raise
        finally:
            self._prompt_abort.disarm()
            self.lock.release()
        return BackendResult(text=raw["choices"][0]["text"], raw=raw)

    def stream(self, request: GenerationRequest) -> Iterator[BackendChunk]:
        arguments = self._arguments(request, stream=True)
        try:
            self.lock.acquire(request.cancel)
        except GenerationCancelled:
            return  # cancelled while waiting for the model: nobody is listening
        try:
            if request.cancel is not None:
                self._prompt_abort.arm(request.cancel)
            chunks = self._llama.create_completion(**arguments)
            try:
                for raw in chunks:
                    yield BackendChunk(delta=raw["choices"][0]["text"], raw=raw)
            except Exception as exc:
                if not _is_abort(exc, request):
                    raise
                # cancelled during the prompt: the consumer is gone, end quietly
            finally:
                chunks.close()
        finally:
            self._prompt_abort.disarm()
            self.lock.release()


def load_model(path: Path, options: Mapping[str, Any]) -> LlamaCppModel:
    """Load ``path`` with ``llama_cpp.Llama(**options)``."""
    from llama_cpp import Llama

    native_log.install()
    try:
        llama = Llama(model_path=str(path), **options)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {str(path)!r}: {exc}. The file has the GGUF header; it "
            "may be truncated, or use an architecture or quantisation this llama-cpp-python "
            "version does not support (run with verbose=True to see llama.cpp's log)"
        ) from exc
    return LlamaCppModel(llama, path)


LLAMA_CPP_BACKEND = BackendSpec(
    name=BACKEND_NAME,
    load=load_model,
    description="llama-cpp-python in this process",
)


@hookimpl
def serapeum_register_backends() -> list[BackendSpec]:
    return [LLAMA_CPP_BACKEND]
