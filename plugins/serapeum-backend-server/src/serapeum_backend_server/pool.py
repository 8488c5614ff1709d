"""Which server, and which of its slots, takes the next request: routing state, no I/O.

A llama-server slot keeps the KV cache of the last prompt it processed, so the next turn of a
conversation sent to the same slot only evaluates the new tokens. ``ServerPool`` remembers what
each slot holds and sends a prompt where the longest prefix of it is already cached ("affinity");
without a useful match it picks the least loaded server. It also keeps each server's health
(exponential backoff after a failure). The caller (``ServerModel``) does all the I/O: it asks
``choose`` for a lease, sends the request, reports back with ``finished`` and ``mark_down``, and
probes ``/health`` before using a server for which ``needs_probe`` is true.

Lookup cost: recorded prompts are kept as bytes (4 per token) in one sorted list. In sorted
order the record sharing the longest prefix with a prompt is next to the prompt's insertion
point, and the shared length only shrinks further away, so ``choose`` bisects (O(log n)
comparisons) and walks outwards past busy slots, stopping at the first record that does not
share ``min_shared_tokens`` tokens. Only the nearest usable record on each side has its common
prefix measured (a binary search over slice comparisons, in C). Nothing compares every record.
"""

from __future__ import annotations

import bisect
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Final

from attrs import frozen

from serapeum.core.errors import ConfigurationError

__all__ = ["RECENT_PROMPTS_PER_SERVER", "ROUTINGS", "Lease", "ServerPool"]

ROUTINGS: Final = ("affinity", "least-loaded", "round-robin")
# Prompts remembered per server for leases the server placed itself (slot None). llama-server
# then picks the idle slot whose cache shares most with the prompt (get_available_slot in
# tools/server/server-context.cpp, --slot-prompt-similarity), and keeps recent prompts in its
# RAM prompt cache (--cache-ram), so such a record still predicts a cache hit on that server.
RECENT_PROMPTS_PER_SERVER: Final = 32

_ANY_SLOT: Final = -1  # the slot field of a record the server placed itself
_ITEM: Final = 4  # bytes per token in a record (array typecode "i")

# A record in the sorted index: (prompt bytes, server, slot or _ANY_SLOT).
_Entry = tuple[bytes, int, int]


@frozen
class Lease:
    """A request's place: ``server`` index and ``slot`` id (None: let the server choose)."""

    server: int
    slot: int | None = None


class _Server:
    """One server's mutable state; guarded by the pool's lock."""

    __slots__ = (
        "backoff",
        "busy",
        "down",
        "last_used",
        "probing",
        "problem",
        "recent",
        "retry_at",
        "slot_prompts",
        "slots",
        "unplaced",
    )

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy: set[int] = set()  # slots leased by id
        self.unplaced = 0  # leases with slot None
        self.last_used = [0] * slots  # tick of each slot's last release (LRU)
        self.slot_prompts: dict[int, bytes] = {}  # slot -> the prompt it holds
        self.recent: OrderedDict[bytes, None] = OrderedDict()  # prompts it placed itself
        self.down = False
        self.backoff = 0.0
        self.retry_at = 0.0
        self.probing = False  # a caller claimed its health check (claim_probes)
        self.problem = ""

    @property
    def in_flight(self) -> int:
        return len(self.busy) + self.unplaced

    def has_room(self) -> bool:
        return self.in_flight < self.slots


def _as_bytes(tokens: Sequence[int]) -> bytes:
    try:
        return array("i", tokens).tobytes()
    except (OverflowError, TypeError) as error:
        raise ConfigurationError(f"prompt token ids must be 32-bit integers ({error})") from None


def _shared_tokens(a: bytes, b: bytes) -> int:
    """Length in tokens of the common prefix of two records."""
    n = min(len(a), len(b)) // _ITEM
    if a[: n * _ITEM] == b[: n * _ITEM]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high] (in tokens)
    while high - low > 1:
        middle = (low + high) // 2
        if a[: middle * _ITEM] == b[: middle * _ITEM]:
            low = middle
        else:
            high = middle
    return low


class ServerPool:
    """Routing state for several servers: leases, prompt affinity, load and health.

    Thread-safe: every method takes one lock and does no I/O. ``slots`` is each server's
    number of parallel slots (1 when unknown). ``clock`` (seconds, monotonic) times backoffs.
    """

    def __init__(
        self,
        urls: Sequence[str],
        slots: Sequence[int],
        *,
        routing: str = "affinity",
        clock: Callable[[], float] = time.monotonic,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        min_shared_tokens: int = 16,
    ) -> None:
        if not urls:
            raise ConfigurationError("a server pool needs at least one server URL")
        if len(slots) != len(urls):
            raise ConfigurationError(f"{len(urls)} server URLs but {len(slots)} slot counts")
        for count in slots:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(
                    f"a server's slot count must be an int >= 1, not {count!r}"
                )
        if routing not in ROUTINGS:
            raise ConfigurationError(f"routing must be one of {ROUTINGS}, not {routing!r}")
        if not 0 < backoff_initial <= backoff_max:
            raise ConfigurationError(
                f"need 0 < backoff_initial <= backoff_max, got {backoff_initial!r} and {backoff_max!r}"
            )
        if isinstance(min_shared_tokens, bool) or min_shared_tokens < 1:
            raise ConfigurationError(f"min_shared_tokens must be >= 1, not {min_shared_tokens!r}")
        self.urls: tuple[str, ...] = tuple(urls)
        self.routing = routing
        self._clock = clock
        self._backoff_initial = float(backoff_initial)
        self._backoff_max = float(backoff_max)
        self._min_shared = int(min_shared_tokens)
        self._servers = [_Server(count) for count in slots]
        self._index: list[_Entry] = []  # every record, sorted
        self._next = 0  # where the next rotation starts
        self._tick = 0  # LRU clock for slots
        self._lock = threading.Lock()

    # -- requests ---------------------------------------------------------------------------

    def choose(self, prompt_tokens: Sequence[int], exclude: Collection[int] = ()) -> Lease | None:
        """Lease a place for a prompt and count it in flight; None when no server can take it.

        ``exclude``: servers that already failed this request (failover). Servers that are up
        come first; only when none can take the request does a down server whose backoff
        elapsed take it, one request at a time, which the caller probes first
        (``needs_probe``). Requests never wait on a probe while another server is up.
        """
        wanted = None
        if self.routing == "affinity" and len(prompt_tokens) >= self._min_shared:
            wanted = _as_bytes(prompt_tokens)
        with self._lock:
            now = self._clock()
            usable = [
                index
                for index, server in enumerate(self._servers)
                if index not in exclude and not server.down
            ] or [
                index
                for index, server in enumerate(self._servers)
                if index not in exclude
                and not server.probing
                and now >= server.retry_at
                and server.in_flight == 0
            ]
            if not usable:
                return None
            lease = None
            if self.routing == "round-robin":
                lease = Lease(self._rotate(usable), None)
            else:
                if wanted is not None:
                    lease = self._affine(wanted, set(usable))
                if lease is None:
                    server = self._least_loaded(usable)
                    lease = Lease(server, self._idle_slot(server))
            self._take(lease)
            return lease

    def finished(self, lease: Lease, prompt_tokens: Sequence[int], ok: bool) -> None:
        """End a lease; when ``ok``, remember that its place now caches ``prompt_tokens``.

        A failed request leaves its slot's cache unknown, so its record is dropped.
        """
        data = None
        if ok and self.routing == "affinity" and len(prompt_tokens) >= self._min_shared:
            data = _as_bytes(prompt_tokens)
        with self._lock:
            server = self._server(lease.server)
            if lease.slot is None:
                if server.unplaced == 0:
                    raise ConfigurationError(f"{lease!r} is not in flight (finished twice?)")
                server.unplaced -= 1
            else:
                if lease.slot not in server.busy:
                    raise ConfigurationError(f"{lease!r} is not in flight (finished twice?)")
                server.busy.discard(lease.slot)
                self._tick += 1
                server.last_used[lease.slot] = self._tick
            if server.down or self.routing != "affinity":
                return
            if lease.slot is None:
                if data is not None:
                    self._remember_recent(lease.server, data)
            elif ok:
                self._remember_slot(lease.server, lease.slot, data)
            else:
                self._remember_slot(lease.server, lease.slot, None)

    def in_flight(self, server: int) -> int:
        """Requests leased on ``server`` and not finished yet."""
        with self._lock:
            return self._server(server).in_flight

    # -- health -----------------------------------------------------------------------------

    def mark_down(self, server: int, problem: str) -> None:
        """Take ``server`` out of rotation after a failure, and forget what it cached.

        The first failure waits ``backoff_initial``; a failure after the wait elapsed (a failed
        probe) doubles it, up to ``backoff_max``. Failures during the wait (other requests hit
        by the same outage) only update the problem.
        """
        with self._lock:
            state = self._server(server)
            now = self._clock()
            state.problem = problem
            if state.down and now < state.retry_at and not state.probing:
                return
            state.probing = False
            if state.down:
                state.backoff = min(state.backoff * 2, self._backoff_max)
            else:
                state.backoff = self._backoff_initial
                state.down = True
            state.retry_at = now + state.backoff
            self._forget(server)

    def mark_up(self, server: int) -> None:
        """``server`` answered (a probe passed): back in rotation, backoff reset."""
        with self._lock:
            state = self._server(server)
            state.down = False
            state.probing = False
            state.backoff = 0.0
            state.retry_at = 0.0
            state.problem = ""

    def needs_probe(self, server: int) -> bool:
        """True when ``server`` is down and its backoff elapsed: probe ``/health`` before use."""
        with self._lock:
            state = self._server(server)
            return state.down and self._clock() >= state.retry_at

    def claim_probes(self) -> list[int]:
        """Down servers whose backoff elapsed, each claimed for one caller to health-check.

        The caller probes them (in the background: no request waits) and reports with
        ``mark_up`` or ``mark_down``; a claimed server is not handed out meanwhile.
        """
        with self._lock:
            now = self._clock()
            due = [
                index
                for index, state in enumerate(self._servers)
                if state.down and not state.probing and now >= state.retry_at
            ]
            for index in due:
                self._servers[index].probing = True
            return due

    def problems(self) -> dict[int, str]:
        """The last problem of each server that is down."""
        with self._lock:
            return {i: s.problem for i, s in enumerate(self._servers) if s.down}

    # -- internals (the lock is held) ---------------------------------------------------------

    def _server(self, server: int) -> _Server:
        if isinstance(server, bool) or not 0 <= server < len(self._servers):
            raise ConfigurationError(f"no server {server!r} in a pool of {len(self._servers)}")
        return self._servers[server]

    def _take(self, lease: Lease) -> None:
        server = self._servers[lease.server]
        if lease.slot is None:
            server.unplaced += 1
        else:
            server.busy.add(lease.slot)

    def _rotate(self, usable: list[int]) -> int:
        count = len(self._servers)
        chosen = min(usable, key=lambda index: (index - self._next) % count)
        self._next = (chosen + 1) % count
        return chosen

    def _least_loaded(self, usable: list[int]) -> int:
        """Lowest in-flight/slots; ties go to the first one from the rotating start."""
        count = len(self._servers)
        best = -1
        for index in sorted(usable, key=lambda i: (i - self._next) % count):
            if best < 0:
                best = index
                continue
            here, there = self._servers[index], self._servers[best]
            if here.in_flight * there.slots < there.in_flight * here.slots:
                best = index
        self._next = (best + 1) % count
        return best

    def _idle_slot(self, server: int) -> int | None:
        """The least recently used idle slot, or None (every slot busy: the server queues)."""
        state = self._servers[server]
        if not state.has_room():
            return None
        idle = (slot for slot in range(state.slots) if slot not in state.busy)
        return min(idle, key=state.last_used.__getitem__, default=None)

    def _usable_record(self, entry: _Entry, usable: set[int]) -> bool:
        _, index, slot = entry
        state = self._servers[index]
        if index not in usable or state.down or not state.has_room():
            return False
        return slot == _ANY_SLOT or slot not in state.busy

    def _affine(self, wanted: bytes, usable: set[int]) -> Lease | None:
        """The usable record sharing the longest prefix (>= min_shared_tokens) with ``wanted``."""
        gate = self._min_shared * _ITEM
        head = wanted[:gate]
        point = bisect.bisect_left(self._index, (wanted,))
        best: tuple[int, bool, _Entry] | None = None
        for side in (range(point - 1, -1, -1), range(point, len(self._index))):
            for position in side:
                entry = self._index[position]
                if entry[0][:gate] != head:
                    break  # further records share even less
                if self._usable_record(entry, usable):
                    rank = (_shared_tokens(wanted, entry[0]), entry[2] != _ANY_SLOT, entry)
                    if best is None or rank[:2] > best[:2]:
                        best = rank
                    break  # the nearest usable record is the best on this side
        if best is None:
            return None
        _, index, slot = best[2]
        return Lease(index, None if slot == _ANY_SLOT else slot)

    def _insert(self, entry: _Entry) -> None:
        bisect.insort(self._index, entry)

    def _remove(self, entry: _Entry) -> None:
        position = bisect.bisect_left(self._index, entry)
        if position < len(self._index) and self._index[position] == entry:
            del self._index[position]

    def _remember_slot(self, server: int, slot: int, data: bytes | None) -> None:
        state = self._servers[server]
        old = state.slot_prompts.pop(slot, None)
        if old is not None:
            self._remove((old, server, slot))
        if data is not None:
            state.slot_prompts[slot] = data
            self._insert((data, server, slot))

    def _remember_recent(self, server: int, data: bytes) -> None:
        recent = self._servers[server].recent
        if data in recent:
            recent.move_to_end(data)
            return
        recent[data] = None
        self._insert((data, server, _ANY_SLOT))
        if len(recent) > RECENT_PROMPTS_PER_SERVER:
            oldest, _ = recent.popitem(last=False)
            self._remove((oldest, server, _ANY_SLOT))

    def _forget(self, server: int) -> None:
        state = self._servers[server]
        for slot, data in state.slot_prompts.items():
            self._remove((data, server, slot))
        for data in state.recent:
            self._remove((data, server, _ANY_SLOT))
        state.slot_prompts.clear()
        state.recent.clear()
