"""Which llama.cpp sequence holds which conversation, and which to give up for room.

A batched model's context holds ``n_parallel + max_sessions`` sequences in one unified
KV cache. The first ``n_parallel`` are anonymous: a request without a session takes the
idle one whose tokens share the longest prefix with its prompt (today's reuse across
turns, for as many conversations as there are slots). The others belong to named
sessions while they keep state: a session's turn continues its own sequence, whatever
ran in between. Room in the KV cache is counted in cells (one per token a sequence
holds); when an admitted request needs more than is free, the least recently used idle
sequences are emptied first. An emptied session's KV is first copied to RAM (within a
byte budget, least recently used copies dropped first) and copied back into a sequence
at its next turn: on Gemma 3 270M a 602-token session copies out and back in 1.8 ms
each, where evaluating it again took seconds. Beyond the budget the next turn evaluates
its whole prompt again.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

from attrs import define, field

from serapeum.llama_cpp.backend.evaluated_tokens import EvaluatedTokens, common_prefix_length

__all__ = ["KvCopier", "Sequence", "SequenceTable"]

_ticks = itertools.count()


@define(eq=False)
class Sequence:
    """One llama.cpp sequence: its id, its owner (a session name or None) and its tokens."""

    seq_id: int
    session: str | None = None
    evaluated: EvaluatedTokens = field(factory=EvaluatedTokens)
    busy: bool = False
    last_used: int = 0

    @property
    def cells(self) -> int:
        return len(self.evaluated.tokens)

    def touch(self) -> None:
        self.last_used = next(_ticks)


@define(eq=False)
class _SavedSession:
    data: bytes
    evaluated: EvaluatedTokens


@define(eq=False)
class KvCopier:
    """Copies one sequence's KV out (``save(seq_id)``: bytes, or None when it cannot) and
    back (``load(data, seq_id)``: whether it worked), within ``budget`` bytes of RAM."""

    save: Callable[[int], bytes | None]
    load: Callable[[bytes, int], bool]
    budget: int


class SequenceTable:
    """Sequences of one batched context; used by the scheduler's thread only.

    ``clear(seq_id)`` empties a sequence in llama.cpp's KV cache (the table forgets its
    tokens itself); ``copier``, when given, keeps evicted sessions' KV in RAM.
    """

    def __init__(
        self,
        n_parallel: int,
        max_sessions: int,
        clear: Callable[[int], None],
        copier: KvCopier | None = None,
    ) -> None:
        self._anonymous = [Sequence(i) for i in range(n_parallel)]
        self._spare = [Sequence(n_parallel + i) for i in range(max_sessions)]
        self._sessions: dict[str, Sequence] = {}
        self._clear = clear
        self._copier = copier
        self._saved: OrderedDict[str, _SavedSession] = OrderedDict()
        self._saved_bytes = 0
        self._to_restore: dict[int, _SavedSession] = {}
        self.evictions = 0
        self.restored = 0  # sessions copied back from RAM

    @property
    def all(self) -> list[Sequence]:
        return [*self._anonymous, *self._sessions.values(), *self._spare]

    def session_busy(self, session: str) -> bool:
        sequence = self._sessions.get(session)
        return sequence is not None and sequence.busy

    def claim(self, session: str | None, prompt: tuple[int, ...]) -> Sequence | None:
        """The sequence for a request, marked busy; None when none can be had now."""
        if session is None:
            idle = [s for s in self._anonymous if not s.busy]
            if not idle:
                return None
            chosen = max(
                idle,
                key=lambda s: (common_prefix_length(s.evaluated.tokens, prompt), -s.last_used),
            )
        else:
            existing = self._sessions.get(session)
            if existing is not None:
                if existing.busy:
                    return None
                chosen = existing
            elif self._spare:
                chosen = self._spare.pop()
            else:
                idle = [s for s in self._sessions.values() if not s.busy]
                if not idle:
                    return None
                chosen = min(idle, key=lambda s: s.last_used)
                self.evictions += 1
                self._drop_session(chosen)
                self._spare.remove(chosen)
            chosen.session = session
            self._sessions[session] = chosen
            saved = self._saved.pop(session, None)
            if saved is not None:
                self._saved_bytes -= len(saved.data)
                if existing is None:
                    self._to_restore[chosen.seq_id] = saved
        chosen.busy = True
        chosen.touch()
        return chosen

    def restore(self, sequence: Sequence) -> None:
        """Copy the session's KV back from RAM, if it was saved (after ``make_room``)."""
        saved = self._to_restore.pop(sequence.seq_id, None)
        if saved is None or self._copier is None:
            return
        if self._copier.load(saved.data, sequence.seq_id):
            sequence.evaluated = saved.evaluated
            self.restored += 1
        else:
            self.empty(sequence)

    def release(self, sequence: Sequence) -> None:
        sequence.busy = False
        sequence.touch()

    def idle_cells(self) -> int:
        return sum(s.cells for s in self.all if not s.busy)

    def make_room(self, room: int) -> bool:
        """Empty idle sequences, least recently used first, until they hold <= ``room`` cells."""
        idle = sorted((s for s in self.all if not s.busy and s.cells), key=lambda s: s.last_used)
        for sequence in idle:
            if self.idle_cells() <= room:
                return True
            self.evictions += 1
            if sequence.session is not None:
                self._drop_session(sequence)
            else:
                self.empty(sequence)
        return self.idle_cells() <= room

    def empty(self, sequence: Sequence) -> None:
        """Forget what ``sequence`` holds, here and in the KV cache."""
        self._clear(sequence.seq_id)
        sequence.evaluated.clear()

    def _drop_session(self, sequence: Sequence, *, keep: bool = True) -> None:
        """The session loses its sequence (its KV copied to RAM when ``keep`` and the
        budget allow); the sequence becomes spare."""
        if sequence.session is not None:
            self._sessions.pop(sequence.session, None)
            if keep and sequence.cells:
                self._save(sequence.session, sequence)
        self.empty(sequence)
        sequence.session = None
        self._spare.append(sequence)

    def forget_session(self, session: str) -> bool:
        """Drop ``session``'s state now (e.g. the conversation ended); False if it had none."""
        saved = self._saved.pop(session, None)
        if saved is not None:
            self._saved_bytes -= len(saved.data)
        sequence = self._sessions.get(session)
        if sequence is None or sequence.busy:
            return saved is not None
        self._drop_session(sequence, keep=False)
        return True

    def _save(self, session: str, sequence: Sequence) -> None:
        copier = self._copier
        if copier is None:
            return
        data = copier.save(sequence.seq_id)
        if data is None or len(data) > copier.budget:
            return
        while self._saved and self._saved_bytes + len(data) > copier.budget:
            _, oldest = self._saved.popitem(last=False)
            self._saved_bytes -= len(oldest.data)
        self._saved[session] = _SavedSession(data, sequence.evaluated)
        sequence.evaluated = EvaluatedTokens()  # ``empty`` must not clear the saved one
        self._saved_bytes += len(data)

    @property
    def saved_bytes(self) -> int:
        return self._saved_bytes

    def sessions(self) -> list[str]:
        return list(self._sessions)
