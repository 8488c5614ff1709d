"""JSON-Schema-constrained decoding with llguidance, applied inside the generation loop.

Why llguidance and "check first": llama.cpp's own grammar sampler (``LlamaGrammar``) checks
every vocabulary entry against the grammar at every step; with Gemma's 262,144 tokens that
is most of the time of a token. Here the token the model would pick anyway is sampled as
usual and checked against the grammar with ``validate_tokens``; only when the grammar
rejects it is llguidance's token mask computed (in native code, a few hundred
microseconds), applied to the logits, and the token sampled again. For sampling that is
exactly the constrained distribution (rejection sampling); for greedy decoding it is the
best allowed token. The tokenizer bridge costs about two seconds on a large vocabulary:
it is built once per loaded model, in the background from the moment it is loaded (see
``JsonConstraints.start_warmup``), and each schema is compiled once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.json_schema import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    _admits_finite_value,
    check_schema,
    schema_from_options,
)
from serapeum.llama_cpp.errors import (
    IncompleteJSONError,
    ModelLoadError,
    SchemaError,
)

__all__ = [
    "MAX_GRAMMAR_BYTES",
    "MAX_GRAMMAR_RULES",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "WARMUP_THREAD_NAME",
    "IncompleteJSONError",
    "JsonConstraints",
    "SchemaError",
    "_admits_finite_value",
    "check_schema",
    "error_summary",
    "grammar_from_gbnf",
    "schema_from_options",
]

# Compact, readable JSON: no free whitespace, so a small model cannot fill its answer with
# newlines; ", " and ": " are the separators models are used to.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_COMPILED_PER_MODEL = 64
# A GBNF grammar: its bytes bound the compiler's recursion as above; its rules bound the
# conversion to llguidance's syntax, which takes time quadratic in a chain of rules.
MAX_GRAMMAR_BYTES = 256_000
MAX_GRAMMAR_RULES = 1_000
# llguidance's compiler recurses once per level of a schema's or grammar's nesting, through
# every $ref and rule reference, with no depth limit of its own: a chain of 1,000 $refs
# (100 KB of JSON) overflows an 8 MiB thread stack and kills the process (SIGSEGV). It
# needs about 300 bytes of stack per byte of input at worst, so it compiles on a thread
# whose stack holds the largest input accepted with room to spare. The stack is reserved
# address space; only the pages a compile touches are ever used.
_COMPILE_STACK_BYTES = 512 * 2**20
# The warm-up runs in steps, each only while the rest of this process is idle (``_Pacer``):
# reading this many tokens' pieces is a step (~10 ms on Gemma 3's 262,144), and so is each
# of llguidance's two native builds (~0.5 s each there, holding the GIL throughout).
_PIECES_PER_STEP = 4_096
# Idle: the process's other threads used under this share of one CPU over a window.
_BUSY_SHARE = 0.1
_PIECES_WINDOW_SECONDS = 0.01  # a pieces step is judged by the window of the step before it
_IDLE_WINDOW_SECONDS = 0.1
# Idle windows in a row needed before a native step (counted after the last step), and
# after a busy window: one stall of the whole process (a crowded machine) looks idle.
_NATIVE_IDLE_WINDOWS = 2
_RESUME_IDLE_WINDOWS = 3
_QUEUE_POLL_SECONDS = 0.02  # a warm-up waiting for another model's checks for hurry / stop
WARMUP_THREAD_NAME = "serapeum-structured-warmup"


_Result = TypeVar("_Result")
_stack_size_lock = threading.Lock()


def _on_a_large_stack(function: Callable[[], _Result]) -> _Result:
    """``function()`` run on a thread with a ``_COMPILE_STACK_BYTES`` stack (see there)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((False, exc))

    for stack_bytes in (_COMPILE_STACK_BYTES, _COMPILE_STACK_BYTES // 8):
        thread = threading.Thread(target=run, name="serapeum-llguidance-compile", daemon=True)
        with _stack_size_lock:  # the size applies to threads started while it is set
            previous = threading.stack_size(stack_bytes)
            try:
                thread.start()
            except RuntimeError:  # no address space for the stack (ulimit -v): try less
                continue
            finally:
                threading.stack_size(previous)
        thread.join()
        break
    else:
        run()  # no thread could start: compile here, as the caller would have
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def grammar_from_gbnf(grammar: str) -> str:
    """llguidance's form of a llama.cpp GBNF grammar; ``SchemaError`` if it does not parse."""
    size = len(grammar.encode("utf-8", "surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        raise SchemaError(
            f"grammar is {size:,} bytes, more than {MAX_GRAMMAR_BYTES:,}; simplify it"
        )
    rules = grammar.count("::=")
    if rules > MAX_GRAMMAR_RULES:
        raise SchemaError(
            f"grammar has {rules:,} rules, more than {MAX_GRAMMAR_RULES:,}; simplify it"
        )
    return _on_a_large_stack(lambda: _converted_gbnf(grammar))


def _converted_gbnf(grammar: str) -> str:
    llguidance = JsonConstraints._llguidance()
    try:
        converted: str = llguidance.grammar_from("gbnf", grammar)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"grammar is not a valid GBNF grammar: {exc}") from exc
    problem = llguidance.LLMatcher.validate_grammar(converted)
    if problem:
        raise SchemaError(f"grammar cannot constrain generation: {problem.strip()}")
    return converted


def canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class _WarmupStopped(Exception):
    """The model is being closed, or the process is exiting: the warm-up gives up."""


# Warm-ups not finished yet. A process that exits while one is in llguidance's native build
# dies with SIGSEGV after Python has finished (6 of 6 runs on Gemma 3, exiting as the build
# let go of the GIL), so at exit each is told to stop and waited for, for the step it is in
# (exit takes up to one native step, ~0.5 s, longer then).
_running_warmups: weakref.WeakSet[JsonConstraints] = weakref.WeakSet()
_running_lock = threading.Lock()
# Two warm-ups side by side would each find the other busy and pause in step.
_one_warmup_at_a_time = threading.Lock()


def _others_cpu_seconds() -> float:
    """CPU time of this process's threads other than the calling one."""
    return time.process_time() - time.thread_time()


class _Pacer:
    """Starts each warm-up step only while the rest of the process is idle.

    Idle is measured, not told: over a window, the CPU time of all the process's threads
    but the warm-up's (``process_time - thread_time``) must stay under ``_BUSY_SHARE`` of
    the window. That covers whatever runs a request (a caller's thread, llama.cpp's
    threads, a batch scheduler) without a lock or a hook in the model. A busy window
    pauses the warm-up until ``_RESUME_IDLE_WINDOWS`` in a row are idle; ``hurry`` ends all
    waiting, ``stopping`` raises ``_WarmupStopped`` at the next step.
    """

    def __init__(self, hurry: CancelToken, stopping: Callable[[], bool]) -> None:
        self._hurry = hurry
        self._stopping = stopping
        self._mark = (time.monotonic(), _others_cpu_seconds())
        self.phase = "starting"  # then "pieces", "native", "between", "paused"
        self.pauses = 0  # busy windows seen
        self.steps = 0  # steps started
        self.native_spans: list[tuple[float, float]] = []  # perf_counter() start, end

    def _restart_window(self) -> None:
        self._mark = (time.monotonic(), _others_cpu_seconds())

    def _wait_until_idle(self, window: float, windows: int) -> None:
        """Return after ``windows`` idle windows in a row (the first may have begun earlier)."""
        while True:
            if self._stopping():
                raise _WarmupStopped
            if self._hurry.is_set():
                return
            since, others = self._mark
            elapsed = time.monotonic() - since
            if elapsed < window:
                self._hurry.wait(window - elapsed)  # wakes at once when hurried or stopped
                continue
            if _others_cpu_seconds() - others <= _BUSY_SHARE * elapsed:
                windows -= 1
                if windows <= 0:
                    return
            else:
                self.pauses += 1
                self.phase = "paused"
                window = max(window, _IDLE_WINDOW_SECONDS)
                windows = _RESUME_IDLE_WINDOWS
            self._restart_window()

    @contextlib.contextmanager
    def step(self, native: bool) -> Iterator[None]:
        """Wait for an idle window, then run the step (``with``); a native one is timed."""
        if native or not self.steps:  # the first too: a request may be starting at load
            self._wait_until_idle(_IDLE_WINDOW_SECONDS, _NATIVE_IDLE_WINDOWS)
        else:
            self._wait_until_idle(_PIECES_WINDOW_SECONDS, 1)
        # A pieces step lets go of the GIL at every call into llama.cpp, so a request that
        # arrives during it shows in the window that starts here. One that arrives during a
        # native step cannot run until it ends: the next window starts after it.
        self._restart_window()
        self.phase = "native" if native else "pieces"
        self.steps += 1
        began = time.perf_counter()
        try:
            yield
        finally:
            if native:
                self.native_spans.append((began, time.perf_counter()))
                self._restart_window()
            self.phase = "between"


@atexit.register
def _stop_warmups_at_exit() -> None:
    with _running_lock:
        running = list(_running_warmups)
    for constraints in running:
        constraints._stop_warmup()


class JsonConstraints:
    """One loaded model's tokenizer bridge and compiled schemas.

    The bridge is built once: by the warm-up (``start_warmup``) if one was started, else
    by the first constrained request. A request that needs it while the warm-up runs makes
    the warm-up hurry and waits for the rest of it; it never builds a second one.
    """

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._tokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._bridge_lock = threading.Lock()  # a foreground build, and the warm-up's start
        self._warmup: threading.Thread | None = None
        self._warmup_done = threading.Event()
        self._warmup_failure: BaseException | None = None
        # Set when a request waits for the bridge or the model closes: no more pauses.
        self._hurry = CancelToken()
        self._closed = False
        self._stopping = False
        self._pacer: _Pacer | None = None  # the warm-up's, once it runs (benchmarks read it)

    @staticmethod
    def _llguidance() -> Any:
        try:
            import llguidance
            import llguidance.llamacpp
        except ImportError as exc:  # pragma: no cover - llguidance is a dependency
            raise ConfigurationError(
                "constrained JSON output needs llguidance: pip install llguidance"
            ) from exc
        return llguidance

    @property
    def ready(self) -> bool:
        """Whether the per-model set-up (the tokenizer bridge) is done."""
        return self._tokenizer is not None

    def start_warmup(self, keep_alive: Any = None) -> None:
        """Build the bridge now on a daemon thread, in steps taken while the process is idle.

        Why in the background and not cached on disk: llguidance's ``LLTokenizer`` has no
        serialised form (llguidance 1.9: no pickling, no bytes in or out), and its native
        half (the token trie and the token slices: ~1.1 s of the ~1.8 s on Gemma 3's
        262,144 tokens) runs at every load; only the Python half (reading the pieces,
        ~0.6 s) could be cached, for a third of the cost and a cache format to trust.

        Why it needs no lock on the model: it only reads the vocabulary (llama.cpp's
        ``llama_token_to_piece``, ``llama_vocab_get_attr``, ``llama_vocab_is_eog``, and
        ``llama_tokenize`` from llguidance: ``const`` methods of ``llama_vocab``, whose
        caches are filled at load, no ``mutable`` state), which decoding never writes.
        Why it still waits its turn: it competes with requests for the CPUs and the GIL (the
        native half holds the GIL for ~0.5 s per build, a PyO3 call that never releases
        it). So ``_Pacer`` lets each step start only once the process's other threads have
        been idle for a moment, whatever they are (a request, a batch scheduler, another
        model); a request that arrives during a step waits for that step only, and the
        warm-up pauses until it is done. One warm-up runs at a time per process.

        A constrained request that needs the bridge (``_bridge``) sets ``_hurry``: the rest
        is built at once, as the request would have. ``keep_alive`` (the ``Llama``) is held
        until the build ends, so the vocabulary is not freed under it; ``close`` stops the
        warm-up first. A failure is kept, not logged, and raised (typed) to the first
        constrained request. The first argument is ignored (it was the model's lock).
        """
        with self._bridge_lock:
            if self._warmup is not None or self._tokenizer is not None or self._closed:
                return

            def run(keep: Any = keep_alive) -> None:  # held until the thread ends, no longer
                self._warm_up()

            thread = threading.Thread(target=run, name=WARMUP_THREAD_NAME, daemon=True)
            self._warmup = thread
            with _running_lock:
                _running_warmups.add(self)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the first constrained request builds
                self._warmup = None
                self._warmup_done.set()

    def _warm_up(self) -> None:
        queued = True
        try:
            while not _one_warmup_at_a_time.acquire(timeout=_QUEUE_POLL_SECONDS):
                if self._stopping:
                    raise _WarmupStopped
                if self._hurry.is_set():  # a request waits: build now, beside the other
                    queued = False
                    break
            try:
                self._pacer = pacer = _Pacer(self._hurry, lambda: self._stopping)
                tokenizer = _build_tokenizer(
                    self._llguidance(), self._vocab, self._n_vocab, step=pacer.step
                )
            finally:
                if queued:
                    _one_warmup_at_a_time.release()
        except _WarmupStopped:
            pass
        except BaseException as exc:  # for the first constrained request: never logged here
            # Its frames' locals (the vocabulary's pieces) go; the stack lines stay.
            traceback.clear_frames(exc.__traceback__)
            self._warmup_failure = exc
        else:
            self._tokenizer = tokenizer
        finally:
            self._warmup_done.set()
            with _running_lock:
                _running_warmups.discard(self)

    def close(self) -> None:
        """Stop the warm-up (after the step it is in) and drop what points into the vocabulary.

        Called before the model is freed: the warm-up reads the vocabulary, and the bridge
        and compiled matchers keep pointers to it. Idempotent.
        """
        with self._bridge_lock:
            self._closed = True
        self._stop_warmup()
        with self._lock:
            self._compiled.clear()
            self._tokenizer = None

    def _stop_warmup(self) -> None:
        """Make the warm-up stop at its next step and wait for the step it is in."""
        self._stopping = True
        self._hurry.set()
        thread = self._warmup
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _bridge(self) -> Any:
        """The tokenizer bridge: the warm-up's (waiting for the rest of it), else built here."""
        tokenizer = self._tokenizer
        if tokenizer is not None:
            return tokenizer
        if self._warmup is not None and not self._closed:
            self._hurry.set()
            self._warmup_done.wait()
        with self._bridge_lock:
            if self._closed:
                raise ModelLoadError(
                    "this model was closed (loaded_model.close()); load it again to "
                    "constrain its output"
                )
            if self._tokenizer is None:
                failure, self._warmup_failure = self._warmup_failure, None
                if failure is None:  # no warm-up, or its failure was reported: build here
                    try:
                        self._tokenizer = _build_tokenizer(
                            self._llguidance(), self._vocab, self._n_vocab
                        )
                    except Exception as exc:
                        failure = exc
                if failure is not None:
                    error = _setup_failure(failure)
                    if error is failure:
                        raise failure
                    raise error from failure
            return self._tokenizer

    def matcher(self, schema: Mapping[str, Any] | None = None, grammar: str | None = None) -> Any:
        """A fresh matcher for a JSON schema or an llguidance grammar, compiled once and checked."""
        return self._template(schema, grammar).deep_copy()

    def check(self, schema: Mapping[str, Any] | None = None, grammar: str | None = None) -> None:
        """Raise ``SchemaError`` now, before generation, if the constraint cannot be used."""
        self._template(schema, grammar)

    def _template(self, schema: Mapping[str, Any] | None, grammar: str | None) -> Any:
        """The compiled matcher (compiled on first use, then cached)."""
        if schema is not None:
            key = canonical(schema)
        elif grammar is not None:
            key = "grammar:" + grammar
        else:
            raise ValueError("a JSON schema or a grammar is needed")
        with self._lock:
            template = self._compiled.get(key)
            if template is None:
                template = _on_a_large_stack(lambda: self._compile(schema, grammar))
                self._compiled[key] = template
                if len(self._compiled) > _COMPILED_PER_MODEL:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(key)
        return template

    def _compile(self, schema: Mapping[str, Any] | None, grammar: str | None) -> Any:
        llguidance = self._llguidance()
        matcher_class = llguidance.LLMatcher
        what = "JSON Schema" if schema is not None else "grammar"
        if schema is not None:
            try:
                grammar = matcher_class.grammar_from_json_schema(
                    dict(schema), defaults=_JSON_OPTIONS
                )
            except (ValueError, RecursionError) as exc:
                raise SchemaError(f"json_schema is not a JSON Schema object: {exc}") from exc
        tokenizer = self._bridge()
        problem = matcher_class.validate_grammar(grammar, tokenizer)
        if problem:
            raise SchemaError(
                f"this {what} cannot constrain generation: {problem.strip()} "
                "(remove or simplify that part of it)"
            )
        matcher = matcher_class(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SchemaError(
                f"this {what} cannot constrain generation: {error_summary(matcher.get_error())}"
            )
        self._dry_run(matcher, what)
        return matcher

    def _dry_run(self, template: Any, what: str) -> None:
        """Compute the first token mask now, so a grammar that fails there fails before generation.

        llguidance finds some problems (a grammar with no way to start, an Earley item set
        past its limits) only when it computes a mask; doing it once per compiled constraint
        makes them a ``SchemaError`` here rather than an error in the middle of a stream.
        """
        import numpy as np

        probe = template.deep_copy()
        mask = np.zeros(((self._n_vocab + 31) // 32,), dtype=np.int32)
        probe.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        if probe.is_error():
            raise SchemaError(
                f"this {what} cannot constrain generation: {error_summary(probe.get_error())}"
            )
        if not mask.any() and not probe.is_accepting():
            raise SchemaError(
                f"this {what} admits no text this model's vocabulary can write "
                "(no token can start it)"
            )


def error_summary(error: str) -> str:
    """llguidance's error in a line, without its parser-state dump."""
    fields: dict[str, str] = {}
    for line in error.splitlines():
        line = line.strip()
        for key in ("Error:", "Stop:"):
            if line.startswith(key):
                fields.setdefault(key, line[len(key) :].strip())
    message = fields.get("Error:")
    if message and message != "None":
        return message[:300]
    stop = fields.get("Stop:")
    if stop == "NoExtensionBias":
        return "it allows no text at all here (NoExtensionBias)"
    if stop:
        return f"llguidance stopped ({stop})"
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return (lines[0] if lines else "no token is allowed here")[:300]


def _setup_failure(failure: BaseException) -> BaseException:
    """The error a constrained request gets for a bridge that could not be built (typed)."""
    if isinstance(failure, SerapeumError) or not isinstance(failure, Exception):
        return failure
    return ModelLoadError(
        "could not prepare this model's vocabulary for constrained output (llguidance's "
        f"tokenizer bridge): {failure}"
    )


def _no_pacing(native: bool) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _build_tokenizer(
    llguidance: Any,
    vocab: Any,
    n_vocab: int,
    step: Callable[[bool], contextlib.AbstractContextManager[Any]] = _no_pacing,
) -> Any:
    """llguidance's view of a llama.cpp vocabulary (the expensive, once-per-model part).

    What ``llguidance.llamacpp.lltokenizer_from_vocab`` does, with llama.cpp's current
    ``llama_vocab_get_attr`` (the deprecated spelling it calls warns once per token) and
    every end-of-generation token as EOS, so the grammar may end at any of them. The work
    is cut into steps, each run inside ``step(native)``: ``_PIECES_PER_STEP`` pieces at a
    time, then llguidance's native build in its two halves (the token trie with no slices,
    then ``with_slices`` with the default ones: what ``from_llamacpp`` does in one call,
    in two shorter holds of the GIL).
    """
    import ctypes

    import llama_cpp as lib

    control = lib.LLAMA_TOKEN_ATTR_CONTROL
    user_defined = lib.LLAMA_TOKEN_ATTR_USER_DEFINED
    size = 16 * 1024
    buffer = ctypes.create_string_buffer(size + 1)
    pieces: list[bytes] = []
    end_of_generation: list[int] = []
    for start in range(0, n_vocab, _PIECES_PER_STEP):
        with step(False):
            for token in range(start, min(start + _PIECES_PER_STEP, n_vocab)):
                written = lib.llama_token_to_piece(vocab, token, buffer, size, 0, True)
                if written < 0:
                    raise ValueError(f"token {token} is longer than {size} bytes")
                piece = buffer.raw[:written]
                attributes = lib.llama_vocab_get_attr(vocab, token)
                # Control tokens (and user-defined ones that look like them) are marked with
                # a leading 0xFF byte: llguidance never lets JSON text produce them.
                if attributes & control or (
                    attributes & user_defined and piece.startswith(b"<") and piece.endswith(b">")
                ):
                    piece = b"\xff" + piece
                pieces.append(piece)
                if lib.llama_vocab_is_eog(vocab, token):
                    end_of_generation.append(token)
    tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    with step(True):
        trie = llguidance.LLTokenizer.from_llamacpp(
            tokens=pieces,
            vocab_ptr=vocab,
            tokenize_fptr=tokenize,
            eos_token=end_of_generation or lib.llama_vocab_eos(vocab),
            slices=[],
        )
    del pieces
    with step(True):
        return trie.with_slices(llguidance.LLTokenizer.general_slices())
