"""Async completion, chat and streaming: chunks arrive as generated, the loop never blocks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from serapeum.core.llms import ChatResponse, CompletionResponse, Message, MessageRole
from serapeum.llama_cpp import LlamaCPP


def test_acomplete_equals_complete(tiny_llm: LlamaCPP) -> None:
    response = asyncio.run(tiny_llm.acomplete("Hello", max_new_tokens=12))
    assert isinstance(response, CompletionResponse)
    assert response.text == tiny_llm.complete("Hello", max_new_tokens=12).text


def test_achat(tiny_llm: LlamaCPP) -> None:
    response = asyncio.run(tiny_llm.achat([Message.user("Hi")], max_new_tokens=6))
    assert isinstance(response, ChatResponse)
    assert response.message.role is MessageRole.ASSISTANT
    assert (
        response.message.content
        == tiny_llm.chat([Message.user("Hi")], max_new_tokens=6).message.content
    )


def test_async_streaming_matches_sync_streaming(tiny_llm: LlamaCPP) -> None:
    async def collect() -> list[CompletionResponse]:
        return [c async for c in await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=20)]

    chunks = asyncio.run(collect())
    sync_chunks = list(tiny_llm.complete("Hello", stream=True, max_new_tokens=20))
    assert [c.delta for c in chunks] == [c.delta for c in sync_chunks]
    assert chunks[-1].text == "".join(c.delta for c in chunks)


def test_async_chat_streaming(tiny_llm: LlamaCPP) -> None:
    async def collect() -> list[ChatResponse]:
        stream = await tiny_llm.achat([Message.user("Hi")], stream=True, max_new_tokens=10)
        return [c async for c in stream]

    chunks = asyncio.run(collect())
    assert chunks and chunks[-1].message.content == "".join(c.delta for c in chunks)


def test_first_chunk_arrives_while_generation_is_still_running(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)

    async def first_chunk_while_busy() -> tuple[bool, int]:
        stream = await llm.acomplete("Hello", stream=True, max_new_tokens=400, stop=[])
        first = await anext(stream)
        busy = llm.loaded_model.lock.locked()  # the worker is still generating
        rest = [c async for c in stream]
        return busy and first.delta is not None, len(rest)

    streamed_while_busy, remaining = asyncio.run(first_chunk_while_busy())
    assert streamed_while_busy
    assert remaining > 10


def test_event_loop_keeps_running_during_generation(tiny_llm: LlamaCPP) -> None:
    async def run() -> tuple[int, float]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await tiny_llm.acomplete("Hello", max_new_tokens=300)
        elapsed = time.perf_counter() - started
        done.set()
        await task
        return ticks, elapsed

    ticks, _ = asyncio.run(run())
    assert ticks > 10  # a blocked loop would tick once, after generation


def test_concurrent_gather_on_one_instance(tiny_llm: LlamaCPP) -> None:
    prompts = [f"prompt number {i}" for i in range(6)]

    async def run() -> list[CompletionResponse]:
        return await asyncio.gather(*(tiny_llm.acomplete(p, max_new_tokens=8) for p in prompts))

    results = asyncio.run(run())
    expected = [tiny_llm.complete(p, max_new_tokens=8).text for p in prompts]
    assert [r.text for r in results] == expected


def test_concurrent_async_streams(tiny_llm: LlamaCPP) -> None:
    async def one(prompt: str) -> str:
        return "".join(
            [
                c.delta
                async for c in await tiny_llm.acomplete(prompt, stream=True, max_new_tokens=10)
            ]
        )

    async def run() -> list[str]:
        return await asyncio.gather(*(one(f"p{i}") for i in range(4)))

    results = asyncio.run(run())
    assert results == [tiny_llm.complete(f"p{i}", max_new_tokens=10).text for i in range(4)]


def test_async_calls_of_one_model_share_one_worker_thread_that_ends_with_the_model(
    tiny_model_path: Path,
) -> None:
    import gc
    import threading
    import weakref

    from serapeum.llama_cpp.model_cache import MODEL_CACHE

    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("serapeum-worker:")}

    before = workers()
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", context_window=640)
    model = weakref.ref(llm.loaded_model)
    assert model() in MODEL_CACHE._models.values()  # type: ignore[attr-defined]

    async def run(model: LlamaCPP) -> None:
        await model.acomplete("a", max_new_tokens=2)
        async for _ in await model.acomplete("b", stream=True, max_new_tokens=2):
            pass

    asyncio.run(run(llm))
    assert len(workers() - before) == 1
    del llm
    gc.collect()
    assert model() is None  # the model was freed...
    deadline = time.monotonic() + 10
    while workers() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not workers() - before  # ...and its worker thread ended
