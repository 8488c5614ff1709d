"""ServerPool: affinity, load, rotation, health and thread safety (pure logic, a fake clock)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from serapeum.core.errors import ConfigurationError
from serapeum_backend_server.pool import RECENT_PROMPTS_PER_SERVER, Lease, ServerPool

URLS = ("http://a:1", "http://b:2", "http://c:3", "http://d:4")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pool(servers: int = 2, slots: int = 2, **kwargs: object) -> ServerPool:
    return ServerPool(URLS[:servers], [slots] * servers, **kwargs)  # type: ignore[arg-type]


def tokens(conversation: int, count: int, start: int = 0) -> list[int]:
    """Token ids unique to one conversation."""
    return [conversation * 100_000 + i for i in range(start, start + count)]


def turn(history: list[int], conversation: int, new: int = 20) -> list[int]:
    return history + tokens(conversation, new, start=len(history) + 50_000)


# -- affinity --------------------------------------------------------------------------------


def test_next_turn_goes_back_to_the_slot_that_served_the_last_one() -> None:
    p = pool(servers=3, slots=2)
    conversations = {c: tokens(c, 40) for c in range(5)}
    home: dict[int, Lease] = {}
    for _ in range(4):  # turns, interleaved across conversations
        for c, history in conversations.items():
            lease = p.choose(history)
            assert lease is not None
            if c in home:
                assert lease == home[c]
            home[c] = lease
            p.finished(lease, history, ok=True)
            conversations[c] = turn(history, c)
    assert all(p.in_flight(s) == 0 for s in range(3))


def test_two_concurrent_conversations_spread_and_keep_their_places() -> None:
    p = pool(servers=2, slots=1)
    a, b = tokens(1, 64), tokens(2, 64)
    lease_a, lease_b = p.choose(a), p.choose(b)
    assert lease_a is not None and lease_b is not None
    assert lease_a.server != lease_b.server
    p.finished(lease_b, b, ok=True)
    p.finished(lease_a, a, ok=True)
    # Both next turns arrive at once; each goes home.
    next_b, next_a = p.choose(turn(b, 2)), p.choose(turn(a, 1))
    assert (next_a, next_b) == (lease_a, lease_b)


def test_longest_shared_prefix_wins() -> None:
    p = pool(servers=3, slots=1)
    system = tokens(9, 30)
    short, long = system + tokens(1, 20), system + tokens(1, 80)
    leases = [p.choose(x) for x in (tokens(5, 40), short, long)]
    for lease, prompt in zip(leases, (tokens(5, 40), short, long), strict=True):
        assert lease is not None
        p.finished(lease, prompt, ok=True)
    assert p.choose([*long, 7, 8, 9]) == leases[2]


def test_a_shared_prefix_below_the_minimum_does_not_count() -> None:
    p = pool(servers=2, slots=1, min_shared_tokens=16)
    first = p.choose(tokens(1, 15))
    assert first is not None
    p.finished(first, tokens(1, 15), ok=True)
    # 15 shared tokens < 16: plain least-loaded rotation moves on to the other server.
    assert p.choose(tokens(1, 40)) == Lease(1 - first.server, 0)


def test_a_busy_slot_is_not_an_affinity_target() -> None:
    p = pool(servers=2, slots=1)
    history = tokens(1, 50)
    home = p.choose(history)
    assert home is not None
    p.finished(home, history, ok=True)
    blocker = p.choose(tokens(2, 50))  # rotation sends it to the other server
    assert blocker is not None and blocker.server != home.server
    p.finished(blocker, tokens(2, 50), ok=True)
    taken = p.choose(history + [1] * 20)  # the same conversation, twice at once
    again = p.choose(history + [2] * 20)
    assert taken == home
    assert again is not None and again.server != home.server


def test_a_failed_request_forgets_what_its_slot_held() -> None:
    p = pool(servers=2, slots=1)
    history = tokens(1, 50)
    home = p.choose(history)
    assert home is not None
    p.finished(home, history, ok=True)
    lease = p.choose(turn(history, 1))
    assert lease == home
    p.finished(lease, turn(history, 1), ok=False)
    # No record left: least-loaded rotation decides, and it moved past the home server.
    assert p.choose(turn(history, 1)) == Lease(1 - home.server, 0)


def test_prompts_the_server_placed_itself_are_remembered_per_server() -> None:
    p = pool(servers=1, slots=1)
    holder = p.choose(tokens(0, 40))
    assert holder == Lease(0, 0)
    prompts = [tokens(c, 40) for c in range(1, RECENT_PROMPTS_PER_SERVER + 2)]
    for prompt in prompts:
        lease = p.choose(prompt)
        assert lease == Lease(0, None)  # every slot busy: the server queues it
        p.finished(lease, prompt, ok=True)
    p.finished(holder, tokens(0, 40), ok=True)
    # A remembered prompt: let the server pick the slot that caches it.
    assert p.choose(turn(prompts[-1], len(prompts))) == Lease(0, None)
    p.finished(Lease(0, None), [], ok=False)
    # The oldest fell out of the last RECENT_PROMPTS_PER_SERVER: an ordinary idle-slot lease.
    assert p.choose(turn(prompts[0], 1)) == Lease(0, 0)


# -- load ------------------------------------------------------------------------------------


def test_least_loaded_spreads_four_concurrent_requests_two_and_two() -> None:
    for routing in ("least-loaded", "affinity"):
        p = pool(servers=2, slots=2, routing=routing)
        leases = [p.choose(tokens(c, 30)) for c in range(4)]
        assert Counter(lease.server for lease in leases if lease) == {0: 2, 1: 2}
        assert len(set(leases)) == 4  # distinct slots
        assert [p.in_flight(s) for s in (0, 1)] == [2, 2]


def test_load_is_relative_to_slots() -> None:
    p = ServerPool(URLS[:2], [3, 1], routing="least-loaded")
    leases = [p.choose([c]) for c in range(4)]
    assert Counter(lease.server for lease in leases if lease) == {0: 3, 1: 1}


def test_least_recently_used_idle_slot_then_none_when_full() -> None:
    p = pool(servers=1, slots=3, routing="least-loaded")
    order = []
    for c in range(6):
        lease = p.choose([c])
        assert lease is not None
        order.append(lease.slot)
        p.finished(lease, [c], ok=True)
    assert order == [0, 1, 2, 0, 1, 2]
    held = [p.choose([c]) for c in range(4)]
    assert [lease.slot for lease in held if lease] == [0, 1, 2, None]


# -- failover and health -----------------------------------------------------------------------


def test_excluded_servers_are_not_chosen() -> None:
    p = pool(servers=3, slots=1)
    for _ in range(6):
        lease = p.choose(tokens(1, 30), exclude={0, 2})
        assert lease is not None and lease.server == 1
        p.finished(lease, tokens(1, 30), ok=True)
    assert p.choose(tokens(1, 30), exclude={0, 1, 2}) is None


def test_backoff_doubles_up_to_the_cap_and_mark_up_resets_it() -> None:
    clock = FakeClock()
    p = pool(servers=1, clock=clock, backoff_initial=0.5, backoff_max=2.0)
    waits = []
    p.mark_down(0, "connection refused")
    for _ in range(5):
        waited = 0.0
        while not p.needs_probe(0):
            clock.advance(0.125)
            waited += 0.125
        waits.append(waited)
        p.mark_down(0, "probe failed")  # the probe after the wait failed: doubled
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    p.mark_up(0)
    assert p.problems() == {}
    p.mark_down(0, "again")
    clock.advance(0.5)
    assert p.needs_probe(0)


def test_failures_during_the_wait_do_not_double_the_backoff() -> None:
    clock = FakeClock()
    p = pool(servers=1, clock=clock, backoff_initial=1.0)
    for problem in ("timeout", "reset", "refused"):  # three requests hit by one outage
        p.mark_down(0, problem)
        clock.advance(0.25)
    assert p.problems() == {0: "refused"}
    clock.advance(0.25)  # 1.0 after the first failure
    assert p.needs_probe(0)


def test_a_down_server_is_skipped_then_probed_one_request_at_a_time() -> None:
    clock = FakeClock()
    p = pool(servers=2, slots=1, clock=clock, backoff_initial=1.0)
    p.mark_down(0, "HTTP 503")
    assert p.problems() == {0: "HTTP 503"}
    assert not p.needs_probe(0)
    leases = [p.choose([c]) for c in range(3)]
    assert {lease.server for lease in leases if lease} == {1}
    assert p.choose([9], exclude={1}) is None  # server 0 still in backoff
    clock.advance(1.0)
    assert p.needs_probe(0)
    probe = p.choose([9], exclude={1})
    assert probe == Lease(0, 0)
    assert p.choose([10], exclude={1}) is None  # one probe at a time
    p.mark_up(0)
    assert not p.needs_probe(0)
    assert p.choose([10], exclude={1}) == Lease(0, None)
    assert p.problems() == {}


def test_mark_down_forgets_the_servers_cache() -> None:
    clock = FakeClock()
    p = pool(servers=2, slots=1, clock=clock)
    history = tokens(1, 50)
    home = p.choose(history)
    assert home is not None
    p.finished(home, history, ok=True)
    p.mark_down(home.server, "restarted")
    p.mark_up(home.server)
    # No record left: rotation (which moved past the home server) decides.
    assert p.choose(turn(history, 1)) == Lease(1 - home.server, 0)


def test_all_servers_down_gives_none() -> None:
    p = pool(servers=2, clock=FakeClock())
    p.mark_down(0, "refused")
    p.mark_down(1, "timeout")
    assert p.choose([1, 2, 3]) is None
    assert p.problems() == {0: "refused", 1: "timeout"}


# -- round-robin -----------------------------------------------------------------------------


def test_round_robin_rotates_strictly_over_up_servers() -> None:
    clock = FakeClock()
    p = pool(servers=3, slots=4, routing="round-robin", clock=clock)
    history = tokens(1, 50)
    chosen = []
    for _ in range(6):  # the same conversation every time: no affinity
        lease = p.choose(history)
        assert lease is not None and lease.slot is None
        chosen.append(lease.server)
        p.finished(lease, history, ok=True)
    assert chosen == [0, 1, 2, 0, 1, 2]
    p.mark_down(1, "refused")
    assert [p.choose(history) for _ in range(4)] == [Lease(s) for s in (0, 2, 0, 2)]


# -- errors and concurrency --------------------------------------------------------------------


def test_finishing_a_lease_twice_is_refused() -> None:
    p = pool()
    lease = p.choose([1, 2, 3])
    assert lease is not None
    p.finished(lease, [1, 2, 3], ok=True)
    with pytest.raises(ConfigurationError, match="not in flight"):
        p.finished(lease, [1, 2, 3], ok=True)
    with pytest.raises(ConfigurationError, match="not in flight"):
        p.finished(Lease(0, None), [], ok=False)
    with pytest.raises(ConfigurationError, match="no server 7"):
        p.mark_down(7, "x")


@pytest.mark.parametrize(
    ("urls", "slots", "kwargs"),
    [
        ((), (), {}),
        (URLS[:2], [1], {}),
        (URLS[:1], [0], {}),
        (URLS[:1], [1], {"routing": "random"}),
        (URLS[:1], [1], {"backoff_initial": 5.0, "backoff_max": 1.0}),
        (URLS[:1], [1], {"min_shared_tokens": 0}),
    ],
)
def test_bad_arguments_are_configuration_errors(
    urls: tuple[str, ...], slots: list[int], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        ServerPool(urls, slots, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("routing", ["affinity", "least-loaded", "round-robin"])
def test_many_threads_choosing_and_finishing(routing: str) -> None:
    p = ServerPool(URLS, [2, 1, 3, 2], routing=routing, clock=FakeClock())
    held: set[tuple[int, int]] = set()
    held_lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        history = tokens(seed, 20)
        start.wait()
        for _ in range(300):
            lease = p.choose(history, exclude={rng.randrange(6)})
            if lease is None:
                continue
            if lease.slot is not None:
                with held_lock:
                    if (lease.server, lease.slot) in held:
                        errors.append(f"{lease} leased twice")
                    held.add((lease.server, lease.slot))
                time.sleep(0)  # let other threads run while the slot is held
                with held_lock:
                    held.discard((lease.server, lease.slot))
            ok = rng.random() < 0.9
            p.finished(lease, history, ok=ok)
            history = turn(history, seed, new=rng.randrange(1, 8)) if ok else tokens(seed, 20)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.in_flight(s) for s in range(4)] == [0, 0, 0, 0]
