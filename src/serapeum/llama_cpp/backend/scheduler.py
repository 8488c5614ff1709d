"""Continuous batching: many requests on one llama.cpp context, one ``llama_decode`` a step.

One thread per batched model runs the loop. Each step decodes one token for every
request that is generating and, in the room left, a chunk of the prompts being
evaluated (``BatchSettings.prefill_chunk`` tokens while others generate, so no stream
stalls for longer than one chunk). Then every request with logits in the step picks its
next token from its own row. A request joins at the next step after it arrives (when a
slot is free) and leaves
at the step it finishes, is cancelled or its caller stops listening. Requests beyond the
slots wait in a bounded queue, in order; none is cancelled to make room. Each sequence has
a KV stream of its own (``sequences.py`` says why and how sessions move in and out).

Why a thread and not the callers' threads: a step serves every request at once, so one
owner of the context decides what goes into it; callers only wait on their ``Ticket``.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

from attrs import frozen

from serapeum.core.errors import SerapeumError
from serapeum.core.plugins import GenerationRequest
from serapeum.llama_cpp.backend.evaluated_tokens import PromptPlan
from serapeum.llama_cpp.backend.generation import LoopModel
from serapeum.llama_cpp.backend.sequences import KvCopier, Sequence, SequenceTable
from serapeum.llama_cpp.backend.slot import SlotGeneration
from serapeum.llama_cpp.errors import DecodeError, QueueFullError

__all__ = ["BatchModel", "BatchScheduler", "BatchSettings", "Ticket"]

logger = logging.getLogger("serapeum.llama_cpp")

# While nothing runs, queued requests are looked at this often (for their cancel tokens).
_IDLE_POLL_SECONDS = 0.05
# How long an idle model waits for requests arriving together (see ``_gather``).
GATHER_SECONDS = 0.01
GATHER_MAX_SECONDS = 0.05


class BatchModel(LoopModel, Protocol):
    """What the scheduler needs of the model besides the loop's needs."""

    def tokenize_continuation(self, text: str) -> list[int] | None: ...


@frozen
class BatchSettings:
    """How a batched model shares its context.

    ``n_parallel`` requests generate at once; ``max_sessions`` named sessions keep their
    tokens in sequences of their own; ``n_ctx_seq`` is one sequence's context (the
    engine's ``context_window``); ``max_queue`` requests may wait for a slot;
    ``prefill_chunk`` prompt tokens are evaluated per step while others generate;
    evicted sessions' KV is kept in up to ``saved_sessions_bytes`` of RAM (0: dropped).
    """

    n_parallel: int
    max_sessions: int
    n_ctx_seq: int
    max_queue: int = 64
    prefill_chunk: int = 256
    saved_sessions_bytes: int = 512 * 2**20


class Ticket:
    """The caller's side of one scheduled request: texts as they come, then the end."""

    def __init__(self, request: GenerationRequest, generation: SlotGeneration) -> None:
        self.request = request
        self.generation = generation
        self.abandoned = False  # the caller stopped listening: free the slot
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def put_text(self, text: str) -> None:
        self._events.put(("text", text))

    def put_end(self, error: BaseException | None) -> None:
        self._events.put(("end", error))

    def texts(self) -> Iterator[str]:
        """The request's text pieces; returns at the end, raises the request's error."""
        get = self._events.get
        while True:
            kind, value = get()
            if kind == "text":
                yield value
            elif value is not None:
                raise value
            else:
                return

    def abandon(self) -> None:
        self.abandoned = True


class _Running:
    """A request in a slot: its sequence, what of its prompt is left, its last token."""

    __slots__ = (
        "begun",
        "decoded",
        "generation",
        "offset",
        "plan",
        "pos",
        "prompt_started",
        "sequence",
        "ticket",
        "token",
    )

    def __init__(
        self, ticket: Ticket, sequence: Sequence, plan: PromptPlan, started: float
    ) -> None:
        self.ticket = ticket
        self.generation = ticket.generation
        self.sequence = sequence
        self.plan = plan
        self.prompt_started = started
        self.offset = plan.cached  # prompt tokens evaluated so far
        self.pos = plan.cached  # the next position in the sequence
        self.token = -1  # the last token picked, decoded at the next step
        self.decoded = 0  # generated tokens decoded into the KV cache
        self.begun = False  # the prompt is evaluated and sampling set up

    @property
    def prefilling(self) -> bool:
        return self.offset < len(self.plan.tokens)


class BatchScheduler:
    """Runs the batch loop for one model on a thread of its own (see the module's doc)."""

    def __init__(self, model: BatchModel, settings: BatchSettings) -> None:
        import llama_cpp as lib

        # Weak: the scheduler must not keep its model alive (the model closes it when freed);
        # a running request's generation holds the model while it needs it.
        self._model = weakref.ref(model)
        self._name = model.name
        self._n_vocab = model.n_vocab
        self._vocab = model.vocab
        self._settings = settings
        llama = model.llama
        self._llama = llama
        self._ctx = llama.ctx
        self._memory = lib.llama_get_memory(self._ctx)
        self._n_batch = int(llama.n_batch)
        self._n_swa = int(lib.llama_model_n_swa(llama.model))
        self._batch = lib.llama_batch_init(self._n_batch, 0, 1)
        # What every step calls, looked up once.
        import numpy as np

        self._decode, self._logits_ith = lib.llama_decode, lib.llama_get_logits_ith
        self._is_eog, self._as_array = lib.llama_vocab_is_eog, np.ctypeslib.as_array
        copier = (
            KvCopier(save=self._copy_out, load=self._copy_in, budget=settings.saved_sessions_bytes)
            if settings.saved_sessions_bytes
            else None
        )
        self._table = SequenceTable(settings.n_parallel, settings.max_sessions, self._clear, copier)
        self._queue: deque[Ticket] = deque()
        self._running: list[_Running] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # llama_decode calls so far
        # The most prompt tokens one step evaluated while other requests were generating:
        # how long a running stream can stall behind a new prompt (tests read it).
        self.largest_prefill_beside_generation = 0
        self._thread = threading.Thread(
            target=self._run, name=f"serapeum-batch:{self._name}", daemon=True
        )
        _live.add(self)
        self._thread.start()

    # -- the callers' side -----------------------------------------------------------
    def submit(self, ticket: Ticket) -> None:
        """Queue ``ticket``; ``QueueFullError`` when ``max_queue`` requests already wait."""
        with self._cond:
            if self._closed:
                raise DecodeError("the model is closed")
            if len(self._queue) >= self._settings.max_queue:
                raise QueueFullError(
                    f"{len(self._queue)} requests already wait for one of this model's "
                    f"{self._settings.n_parallel} slots (max_queue={self._settings.max_queue}); "
                    "retry later, or raise n_parallel or max_queue",
                    queued=len(self._queue),
                )
            self._queue.append(ticket)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    @property
    def evictions(self) -> int:
        return self._table.evictions

    def close(self) -> None:
        """Stop the loop (requests still queued or running end with ``DecodeError``)."""
        import llama_cpp as lib

        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        lib.llama_batch_free(self._batch)

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                with self._cond:
                    if not self._running:
                        self._gather()
                    if self._closed:
                        break
                    self._drop_cancelled_waiting()
                    self._admit()
                    if not self._running:
                        self._cond.wait(_IDLE_POLL_SECONDS)
                        continue
                self._step()
        except BaseException as exc:  # a bug: fail every caller rather than hang them
            logger.exception("the batch scheduler of %s stopped", self._name)
            error = exc
        finally:
            failure = DecodeError(
                "the model was closed" if error is None else f"the batch loop failed: {error!r}"
            )
            with self._cond:
                self._closed = True
                waiting = list(self._queue)
                self._queue.clear()
            for ticket in waiting:
                ticket.put_end(failure)
            for running in list(self._running):
                self._finish(running, failure)

    def _gather(self) -> None:
        """Wait for work; once it comes to an idle model, wait a moment for more.

        Requests that start together (a ``gather``, threads released at once) then share
        their first step, so they run through the same batch shapes: llama.cpp's kernels
        round a row differently with the number of rows beside it, so copies of one prompt
        give one text only when they keep step. Each arrival extends the wait by
        ``GATHER_SECONDS``, up to ``GATHER_MAX_SECONDS``, or until every slot is asked for.
        """
        while not self._closed and not self._queue:
            self._cond.wait()
        deadline = time.monotonic() + GATHER_MAX_SECONDS
        seen = 0
        while not self._closed and seen != len(self._queue):
            seen = len(self._queue)
            if seen >= self._settings.n_parallel:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(min(GATHER_SECONDS, left))

    def _drop_cancelled_waiting(self) -> None:
        for ticket in [t for t in self._queue if t.abandoned or _cancelled(t.request)]:
            self._queue.remove(ticket)
            ticket.generation.cancelled_before_first_token(
                PromptPlan(tokens=list(ticket.request.prompt_tokens), cached=0),
                time.perf_counter(),
            )
            ticket.put_end(None)

    def _admit(self) -> None:
        """Move waiting requests into free slots, in order (a session whose previous turn
        still runs waits without holding up the others)."""
        settings = self._settings
        for ticket in list(self._queue):
            if len(self._running) >= settings.n_parallel:
                return
            request = ticket.request
            if request.session is not None and self._table.session_busy(request.session):
                continue  # its conversation's previous turn is still running
            sequence = self._table.claim(request.session, request.prompt_tokens)
            if sequence is None:
                return
            self._queue.remove(ticket)
            plan = self._plan(sequence, request)
            self._running.append(_Running(ticket, sequence, plan, time.perf_counter()))

    def _plan(self, sequence: Sequence, request: GenerationRequest) -> PromptPlan:
        """What of the prompt ``sequence`` already holds; the rest is removed from it."""
        import llama_cpp as lib

        model = self._model()
        if model is None:  # cannot happen while its request's generation holds it
            raise DecodeError("the model was freed")
        plan = sequence.evaluated.plan(
            request.prompt_tokens,
            request.prompt_text,
            model.tokenize_continuation,
            self._settings.n_ctx_seq,
        )
        cached = plan.cached
        seq_id = sequence.seq_id
        # A sliding-window cache keeps only the last window of positions: continuing from an
        # earlier position needs the window before it (llama-server's check).
        window_start = max(0, cached - self._n_swa)
        if (
            cached
            and self._n_swa
            and lib.llama_memory_seq_pos_min(self._memory, seq_id) > window_start
        ):
            cached = 0
        if cached and not lib.llama_memory_seq_rm(self._memory, seq_id, cached, -1):
            cached = 0
        if not cached:
            lib.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        plan.cached = cached
        sequence.evaluated.tokens = plan.tokens[:cached]
        return plan

    def _copy_out(self, seq_id: int) -> bytes | None:
        import llama_cpp as lib

        size = int(lib.llama_state_seq_get_size(self._ctx, seq_id))
        if size <= 0 or size > self._settings.saved_sessions_bytes:
            return None
        buffer = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buffer, size, seq_id))
        return ctypes.string_at(buffer, written) if written else None

    def _copy_in(self, data: bytes, seq_id: int) -> bool:
        import llama_cpp as lib

        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return bool(lib.llama_state_seq_set_data(self._ctx, buffer, len(data), seq_id))

    def _clear(self, seq_id: int) -> None:
        import llama_cpp as lib

        lib.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def _step(self) -> None:
        """One ``llama_decode`` over every running request, then their picks."""
        batch, running = self._batch, list(self._running)
        tokens, positions, seq_ids, logits_flags = (
            batch.token,
            batch.pos,
            batch.seq_id,
            batch.logits,
        )
        generating = [r for r in running if not r.prefilling]
        budget = self._n_batch - len(generating)
        if generating:
            budget = min(budget, self._settings.prefill_chunk)
        takes: dict[_Running, int] = {}  # prompt tokens evaluated this step, in arrival order
        for r in running:
            if budget <= 0:
                break
            if r.prefilling:
                takes[r] = min(budget, len(r.plan.tokens) - r.offset)
                budget -= takes[r]
        chunks = list(takes.items())
        # Rows in sequence order: with a KV stream per sequence, llama.cpp splits a batch
        # whose sequences come out of order into several (a 4-token step took 74-81 ms
        # shuffled against 38-59 ms in order, on Gemma 3 270M).
        n = 0
        outputs: list[tuple[_Running, int]] = []
        for r in sorted([*generating, *takes], key=lambda r: r.sequence.seq_id):
            seq_id = r.sequence.seq_id
            take = takes.get(r)
            if take is None:
                tokens[n], positions[n], seq_ids[n][0], logits_flags[n] = r.token, r.pos, seq_id, 1
                batch.n_seq_id[n] = 1
                outputs.append((r, n))
                n += 1
                continue
            prompt = r.plan.tokens
            for i in range(take):
                tokens[n], positions[n], seq_ids[n][0], logits_flags[n] = (
                    prompt[r.offset + i],
                    r.pos + i,
                    seq_id,
                    0,
                )
                batch.n_seq_id[n] = 1
                n += 1
            if r.offset + take == len(prompt):
                logits_flags[n - 1] = 1
                outputs.append((r, n - 1))
        batch.n_tokens = n
        if generating and chunks:
            prefill = n - len(generating)
            if prefill > self.largest_prefill_beside_generation:
                self.largest_prefill_beside_generation = prefill
        status = self._decode(self._ctx, batch)
        self.steps += 1
        if status:
            self._fail_step(running, status)
            return
        for r in generating:
            r.pos += 1
            r.decoded += 1
        for r, take in chunks:
            r.offset += take
            r.pos += take
            if not r.prefilling:
                r.sequence.evaluated.start(r.plan, r.ticket.request.prompt_text)
                r.generation.begin(r.plan, self._llama.last_n_tokens_size, r.prompt_started)
                r.begun = True
        n_vocab, vocab = self._n_vocab, self._vocab
        is_eog, as_array, logits_ith = self._is_eog, self._as_array, self._logits_ith
        for r, index in outputs:
            generation = r.generation
            if generation.done:  # nothing to generate (no room left in the context)
                self._finish(r)
                continue
            try:
                logits = as_array(logits_ith(self._ctx, index), shape=(n_vocab,))
                token = generation.pick(index, logits)
                text = generation.take(token, bool(is_eog(vocab, token)))
            except SerapeumError as exc:
                self._finish(r, exc)
                continue
            if text:
                r.ticket.put_text(text)
            if generation.done:
                self._finish(r)
            else:
                r.token = token
        for r in list(self._running):
            if r.ticket.abandoned or _cancelled(r.ticket.request):
                if r.prefilling:
                    r.generation.cancelled_before_first_token(
                        r.plan, r.prompt_started, r.plan.cached
                    )
                else:
                    r.generation.cancel()
                self._finish(r)

    def _fail_step(self, running: list[_Running], status: int) -> None:
        """llama_decode failed: what the step held is unknown, so its sequences are emptied."""
        message = (
            f"llama_decode found no room in the KV cache ({self._settings.n_ctx_seq} cells "
            "per sequence); raise context_window"
            if status == 1
            else f"llama_decode failed with status {status}"
        )
        for r in running:
            self._table.empty(r.sequence)
            self._finish(r, DecodeError(message), record=False)

    def _finish(
        self, r: _Running, error: BaseException | None = None, *, record: bool = True
    ) -> None:
        """The request leaves its slot: its tokens stay in its sequence for the next turn."""
        generation = r.generation
        begun = r.begun
        try:
            if begun:
                tail = generation.end()
                if tail and error is None:
                    r.ticket.put_text(tail)
            generation.release_sampling()
            if record:
                self._record(r, begun)
            if begun and error is None:
                generation.conclude_batched()
        except SerapeumError as exc:
            error = exc
        finally:
            if r in self._running:
                self._running.remove(r)
            self._table.release(r.sequence)
            r.ticket.put_end(error)

    def _record(self, r: _Running, begun: bool) -> None:
        evaluated = r.sequence.evaluated
        if not begun:  # stopped inside the prompt: keep the tokens it evaluated, no text
            evaluated.tokens = r.plan.tokens[: r.offset]
            evaluated.forget_text()
            return
        generation = r.generation
        decoded = r.decoded
        marks = [mark for mark in generation.marks if mark[1] <= decoded]
        text = generation.raw_text[: marks[-1][0]] if marks else ""
        evaluated.extend(generation.generated[:decoded], text, marks)


_live: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop every loop before the interpreter frees the models under a running step."""
    for scheduler in list(_live):
        scheduler.close()


def _cancelled(request: GenerationRequest) -> bool:
    return request.cancel is not None and request.cancel.is_set()
