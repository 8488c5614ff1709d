"""Named sessions on a batched model (issue 12): each keeps its conversation's KV cache.

Reuse is asserted from usage figures (``cached_prompt_tokens``), never from timings. A
session's next turn continues its own sequence whatever ran in between; the least recently
used idle session is evicted when sessions or KV cells run out, and its next turn is then
evaluated whole and answers as a fresh model would. All on the tiny model, greedy.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

from serapeum.core.llms import ChatResponse, CompletionResponse, Message
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.scheduler import BatchScheduler

# Instances with equal options share one loaded model (and its sessions): each model here
# gets a max_queue of its own, so every test starts from empty caches.
_unique_queue = itertools.count(100)


def _tiny(path: Path, **kwargs: Any) -> LlamaCPP:
    settings: dict[str, Any] = {
        "formatter": "llama2",
        "temperature": 0.0,
        "context_window": 512,
        "max_new_tokens": 16,
    }
    settings.update(kwargs)
    if settings.get("n_parallel", 1) > 1 or settings.get("max_sessions"):
        # a model of its own (another max_queue is another cache key): no other test's sessions
        settings.setdefault("max_queue", next(_unique_queue))
    return LlamaCPP(model_path=str(path), **settings)


def _scheduler(llm: LlamaCPP) -> BatchScheduler:
    scheduler = llm.loaded_model.scheduler  # type: ignore[attr-defined]
    assert isinstance(scheduler, BatchScheduler)
    return scheduler


class Conversation:
    """A chat whose turns go to one session (or none): the history grows with each answer."""

    def __init__(self, llm: LlamaCPP, session: str | None, *questions: str) -> None:
        self.llm = llm
        self.session = session
        self.questions = list(questions)
        self.history: list[Message] = []
        self.responses: list[ChatResponse] = []

    def _kwargs(self) -> dict[str, Any]:
        return {} if self.session is None else {"session": self.session}

    def turn(self) -> ChatResponse:
        self.history.append(Message.user(self.questions[len(self.responses)]))
        response = self.llm.chat(self.history, **self._kwargs())
        self.history.append(response.message)
        self.responses.append(response)
        return response

    def reused_all_of_the_last_turn(self) -> bool:
        """The last turn found the previous turn's prompt and answer in the cache (all but
        the answer's last token, which was picked but never decoded)."""
        before, last = self.responses[-2].usage, self.responses[-1].usage
        assert before is not None and last is not None
        return last.cached_prompt_tokens >= before.prompt_tokens + before.completion_tokens - 1


def _cached(response: ChatResponse) -> int:
    assert response.usage is not None
    return response.usage.cached_prompt_tokens


def test_turn_two_of_a_session_reuses_turn_one(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2)
    chat = Conversation(llm, "a", "What is 2+2?", "And 3+3?", "And 4+4?")
    first = chat.turn()
    assert _cached(first) == 0
    chat.turn()
    assert chat.reused_all_of_the_last_turn()
    chat.turn()
    assert chat.reused_all_of_the_last_turn()


def test_interleaved_sessions_keep_their_caches(tiny_model_path: Path) -> None:
    # One slot: without sessions, A and B would overwrite each other's only sequence.
    llm = _tiny(tiny_model_path, n_parallel=1, max_sessions=2)
    a = Conversation(llm, "a", "Tell me about cats.", "And dogs?", "And birds?")
    b = Conversation(llm, "b", "List some numbers.", "More numbers.", "Even more.")
    for _ in range(3):
        a.turn()
        llm.complete("An anonymous request in between")  # uses the anonymous sequence
        b.turn()
        if len(a.responses) > 1:
            assert a.reused_all_of_the_last_turn()
            assert b.reused_all_of_the_last_turn()
    assert _scheduler(llm).evictions == 0


def test_async_session_turns_reuse(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2)

    async def main() -> tuple[ChatResponse, ChatResponse, str]:
        history = [Message.user("Hello async")]
        first = await llm.achat(history, session="async")
        history += [first.message, Message.user("Again")]
        second = await llm.achat(history, session="async")
        history += [second.message, Message.user("Once more")]
        streamed = ""
        last = None
        async for chunk in await llm.achat(history, session="async", stream=True):
            streamed += chunk.delta or ""
            last = chunk
        assert last is not None and last.raw is not None
        return first, second, streamed

    first, second, streamed = asyncio.run(main())
    assert first.usage is not None and second.usage is not None
    assert _cached(second) >= first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert streamed


def _turns(llm: LlamaCPP, conversations: dict[str, Conversation], order: str) -> ChatResponse:
    """One turn of each named conversation, in ``order``; the last turn's response."""
    response = None
    for name in order:
        response = conversations[name].turn()
    assert response is not None
    return response


def _three(llm: LlamaCPP) -> dict[str, Conversation]:
    return {
        "a": Conversation(llm, "a", "Tell me about cats.", "And dogs?"),
        "b": Conversation(llm, "b", "List some numbers.", "More numbers."),
        "c": Conversation(llm, "c", "Say something.", "Say more."),
    }


# One slot: a session not running waits in RAM. max_sessions=2 keeps two copies, so by the
# time a comes back (a, b, c, b, a) its copy was the least recently used and was dropped;
# saved_sessions_bytes=0 keeps none, so a loses its state as soon as b takes the slot.
EVICTING = {
    "max_sessions": ({"max_sessions": 2}, "abcba"),
    "saved_sessions_bytes": ({"max_sessions": 4, "saved_sessions_bytes": 0}, "aba"),
}


@pytest.mark.parametrize("how", sorted(EVICTING))
def test_an_evicted_session_starts_again_like_a_fresh_model(
    tiny_model_path: Path, how: str
) -> None:
    options, order = EVICTING[how]
    llm = _tiny(tiny_model_path, n_parallel=1, **options)
    conversations = _three(llm)
    evicted = _turns(llm, conversations, order)
    assert _scheduler(llm).evictions >= 1
    a = conversations["a"]
    first = a.responses[0]
    assert first.usage is not None
    assert _cached(evicted) < first.usage.prompt_tokens  # evaluated again (but for a shared start)
    # ...and it answers as a model that never saw the conversation
    fresh = _tiny(tiny_model_path, n_parallel=1, max_sessions=1, max_queue=17)
    assert fresh.chat(a.history[:-1], session="a").message.content == evicted.message.content


def test_a_session_waiting_in_ram_is_copied_back(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=1, max_sessions=4)  # default: copies kept in RAM
    conversations = _three(llm)
    restored = _turns(llm, conversations, "abcba")
    scheduler = _scheduler(llm)
    assert scheduler.evictions == 0
    a = conversations["a"]
    assert a.reused_all_of_the_last_turn()
    assert conversations["b"].reused_all_of_the_last_turn()
    # The same two turns of a on a model with a slot for every session: the same answer.
    roomy = _tiny(tiny_model_path, n_parallel=3, max_sessions=4)
    kept = Conversation(roomy, "a", *a.questions)
    kept.turn()
    assert kept.responses[0].message.content == a.responses[0].message.content
    assert kept.turn().message.content == restored.message.content
    assert kept.reused_all_of_the_last_turn()


def test_requests_without_a_session_still_reuse(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2)
    chat = Conversation(llm, None, "What is 2+2?", "And 3+3?")
    chat.turn()
    chat.turn()
    assert chat.reused_all_of_the_last_turn()


def test_single_slot_model_with_sessions_serves_anonymous_requests_too(
    tiny_model_path: Path,
) -> None:
    llm = _tiny(tiny_model_path, n_parallel=1, max_sessions=1)
    plain = _tiny(tiny_model_path)
    assert llm.loaded_model.scheduler is not None  # type: ignore[attr-defined]
    assert llm.complete("Hello there").text == plain.complete("Hello there").text


def test_anonymous_conversations_keep_one_slot_each(tiny_model_path: Path) -> None:
    """Two anonymous conversations on two slots keep one sequence each ("today's reuse
    across turns, for as many conversations as there are slots"): B's first turn takes the
    empty sequence, not A's, although they share the template's first tokens."""
    llm = _tiny(tiny_model_path, n_parallel=2, max_sessions=0)
    a = Conversation(llm, None, "Tell me about cats.", "And dogs?")
    b = Conversation(llm, None, "List some numbers.", "More numbers.")
    a.turn()
    b.turn()
    a.turn()
    b.turn()
    assert a.reused_all_of_the_last_turn()
    assert b.reused_all_of_the_last_turn()


def test_one_session_takes_its_turns_one_at_a_time(tiny_model_path: Path) -> None:
    """Two requests on one session at once: the second waits for the first (its turn
    would otherwise overwrite the sequence the first is generating into)."""
    llm = _tiny(tiny_model_path, n_parallel=2)
    prompt = llm.format_completion("Shared session")
    barrier = threading.Barrier(2)
    results: list[CompletionResponse] = []

    def call() -> None:
        barrier.wait()
        results.append(llm.complete(prompt, formatted=True, session="shared"))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2
    assert results[0].text == results[1].text
    # the second found the first's prompt in the session's sequence
    assert (
        max(r.usage.cached_prompt_tokens for r in results if r.usage)
        >= len(llm.tokenize(prompt)) - 1
    )


def test_a_streamed_turn_is_kept_for_the_next_one(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2)
    history = [Message.user("Stream me something.")]
    chunks = list(llm.chat(history, session="s", stream=True))
    first = chunks[-1]
    assert first.usage is not None
    history += [first.message, Message.user("Go on.")]
    second = llm.chat(history, session="s")
    assert _cached(second) >= first.usage.prompt_tokens + first.usage.completion_tokens - 1
