"""Which conversation each slot's sequence holds, and where the others wait.

A batched model's context holds ``n_parallel`` sequences, each in a KV stream of its own
(llama.cpp's non-unified cache: a sequence's attention never sees another's cells, so its
text cannot depend on what runs beside it). A request without a session takes the idle
sequence that already holds the start of its prompt (today's reuse across turns, for as
many conversations as there are slots), else an empty one, else the least recently used.

A named session continues its own tokens wherever they are: in a slot's sequence, or, when
that slot was needed by another conversation, in RAM. A session's KV is copied out of its
sequence (``llama_state_seq_get_data``) before another conversation takes it, and copied
back at the session's next turn: on Gemma 3 270M a 602-token session copies out and back
in 1.8 ms each, where evaluating it again took seconds. ``max_sessions`` copies and
``saved_sessions_bytes`` of RAM bound what is kept (least recently used dropped first);
a session beyond them evaluates its whole prompt again at its next turn.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Sequence as Tokens

from attrs import define, field

from serapeum.llama_cpp.backend.evaluated_tokens import EvaluatedTokens, common_prefix_length

__all__ = ["KvCopier", "Sequence", "SequenceTable"]

_ticks = itertools.count()


@define(eq=False)
class Sequence:
    """One slot's llama.cpp sequence: its id, whose tokens it holds, and those tokens."""

    seq_id: int
    session: str | None = None  # the session whose tokens these are (None: anonymous)
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
    """The slots' sequences and the sessions saved in RAM; the scheduler's thread only.

    ``clear(seq_id)`` empties a sequence in llama.cpp's KV cache (the table forgets its
    tokens itself); ``copier``, when given, keeps sessions' KV in RAM between turns.
    """

    def __init__(
        self,
        n_parallel: int,
        max_sessions: int,
        clear: Callable[[int], None],
        copier: KvCopier | None = None,
    ) -> None:
        self._slots = [Sequence(i) for i in range(n_parallel)]
        self._max_saved = max_sessions
        self._clear = clear
        self._copier = copier
        self._saved: OrderedDict[str, _SavedSession] = OrderedDict()
        self._saved_bytes = 0
        self.evictions = 0  # sessions that lost their state (not saved, or dropped from RAM)
        self.saves = 0  # sessions copied out to RAM
        self.restored = 0  # sessions copied back from RAM

    @property
    def all(self) -> list[Sequence]:
        return list(self._slots)

    def session_busy(self, session: str) -> bool:
        return any(s.busy and s.session == session for s in self._slots)

    def claim(self, session: str | None, prompt: Tokens[int]) -> Sequence | None:
        """The sequence for a request, marked busy, holding what can be reused of it; None
        when every slot is busy."""
        idle = [s for s in self._slots if not s.busy]
        if not idle:
            return None
        if session is not None:
            home = next((s for s in idle if s.session == session), None)
            chosen = home if home is not None else self._least_needed(idle)
            if home is None:
                self._vacate(chosen)
                self._restore(session, chosen)
                chosen.session = session
        else:
            chosen = self._continued(idle, prompt) or self._least_needed(idle)
            if chosen.session is not None:
                self._vacate(chosen)
        chosen.busy = True
        chosen.touch()
        return chosen

    def release(self, sequence: Sequence) -> None:
        sequence.busy = False
        sequence.touch()

    def empty(self, sequence: Sequence) -> None:
        """Forget what ``sequence`` holds, here and in the KV cache."""
        self._clear(sequence.seq_id)
        sequence.evaluated = EvaluatedTokens()

    @property
    def saved_bytes(self) -> int:
        return self._saved_bytes

    def saved_sessions(self) -> list[str]:
        return list(self._saved)

    # -- choosing ------------------------------------------------------------------------
    @staticmethod
    def _continued(idle: list[Sequence], prompt: Tokens[int]) -> Sequence | None:
        """The anonymous sequence whose tokens the prompt mostly continues, if any.

        At least half of what it holds must be shared (llama-server's slot similarity),
        so two conversations that share only a template's first tokens keep a slot each.
        """
        tokens = list(prompt)
        best, best_shared = None, 0
        for sequence in idle:
            if sequence.session is not None or not sequence.cells:
                continue
            shared = common_prefix_length(sequence.evaluated.tokens, tokens)
            if shared * 2 >= sequence.cells and shared > best_shared:
                best, best_shared = sequence, shared
        return best

    @staticmethod
    def _least_needed(idle: list[Sequence]) -> Sequence:
        """An empty sequence, else an anonymous one, else a session's; least recently used."""
        return min(idle, key=lambda s: (bool(s.cells), s.session is not None, s.last_used))

    # -- moving sessions between slots and RAM -----------------------------------------
    def _vacate(self, sequence: Sequence) -> None:
        """Make ``sequence`` free for another conversation, saving its session's KV."""
        session, held = sequence.session, sequence.cells
        if session is not None and held and not self._save(session, sequence):
            self.evictions += 1
        sequence.session = None
        if held:
            self.empty(sequence)

    def _save(self, session: str, sequence: Sequence) -> bool:
        copier = self._copier
        if copier is None or not self._max_saved:
            return False
        data = copier.save(sequence.seq_id)
        if data is None or len(data) > copier.budget:
            return False
        while self._saved and (
            self._saved_bytes + len(data) > copier.budget or len(self._saved) >= self._max_saved
        ):
            self._drop_oldest()
        self._saved[session] = _SavedSession(data, sequence.evaluated)
        self._saved_bytes += len(data)
        sequence.evaluated = EvaluatedTokens()  # the copy keeps them now
        self.saves += 1
        return True

    def _drop_oldest(self) -> None:
        _, oldest = self._saved.popitem(last=False)
        self._saved_bytes -= len(oldest.data)
        self.evictions += 1

    def _restore(self, session: str, sequence: Sequence) -> None:
        saved = self._saved.pop(session, None)
        if saved is None or self._copier is None:
            return
        self._saved_bytes -= len(saved.data)
        if self._copier.load(saved.data, sequence.seq_id):
            sequence.evaluated = saved.evaluated
            self.restored += 1
        else:
            self.empty(sequence)
            self.evictions += 1
