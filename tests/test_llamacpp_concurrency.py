"""Threads on shared models, and stopping streams early: no crash, lock always released."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.llms.thread_bridge import RUN_AHEAD
from serapeum.llama_cpp import LlamaCPP, ModelBusyError


def _wait_unlocked(llm: LlamaCPP, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while llm.loaded_model.lock.locked():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _evaluated_tokens(llm: LlamaCPP) -> int:
    """Tokens llama.cpp has evaluated in the context: prompt plus generated so far."""
    return int(llm.loaded_model.llama.n_tokens)


def _prompt_tokens(llm: LlamaCPP) -> int:
    return llm.count_tokens(llm.format_completion("Hello"))


def test_threads_on_two_instances_sharing_one_model(tiny_model_path: Path) -> None:
    a = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
    b = LlamaCPP(model_path=str(tiny_model_path), formatter="mistral", temperature=0.0)
    assert a.loaded_model is b.loaded_model
    expected = {
        (name, i): llm.complete(f"question {i}", max_new_tokens=12).text
        for name, llm in (("a", a), ("b", b))
        for i in range(4)
    }

    def work(job: tuple[str, int]) -> tuple[tuple[str, int], str]:
        name, i = job
        llm = a if name == "a" else b
        if i % 2:
            text = "".join(
                c.delta for c in llm.complete(f"question {i}", stream=True, max_new_tokens=12)
            )
        else:
            text = llm.complete(f"question {i}", max_new_tokens=12).text
        return job, text

    jobs = list(expected) * 3
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(work, jobs))
    for job, text in results:
        assert text == expected[job], job
    assert not a.loaded_model.lock.locked()


def test_breaking_out_of_a_stream_releases_the_lock(tiny_llm: LlamaCPP) -> None:
    for count, _chunk in enumerate(tiny_llm.complete("Hello", stream=True, max_new_tokens=200)):
        assert tiny_llm.loaded_model.lock.locked()
        if count == 2:
            break
    assert not tiny_llm.loaded_model.lock.locked()  # the unreferenced stream was closed


def test_closing_a_kept_stream_releases_the_lock(tiny_llm: LlamaCPP) -> None:
    stream = tiny_llm.complete("Hello", stream=True, max_new_tokens=200)
    next(stream)
    assert tiny_llm.loaded_model.lock.locked()
    stream.close()
    assert not tiny_llm.loaded_model.lock.locked()
    assert tiny_llm.complete("Hi", max_new_tokens=2).text is not None


def test_chat_stream_close_stops_generation(tiny_llm: LlamaCPP) -> None:
    stream = tiny_llm.chat([Message.user("Hi")], stream=True, max_new_tokens=200)
    next(stream)
    assert tiny_llm.loaded_model.lock.locked()
    stream.close()
    assert not tiny_llm.loaded_model.lock.locked()


def test_same_thread_second_call_during_open_stream_fails_clearly(tiny_llm: LlamaCPP) -> None:
    stream = tiny_llm.complete("Hello", stream=True, max_new_tokens=50)
    next(stream)
    with pytest.raises(ModelBusyError, match="unfinished stream in this thread"):
        tiny_llm.complete("again", max_new_tokens=2)
    stream.close()
    assert not tiny_llm.loaded_model.lock.locked()


def test_async_stream_aclose_stops_generation_within_a_token_or_two(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)

    async def run() -> list[str]:
        stream = await llm.acomplete("Hello", stream=True, max_new_tokens=1500, stop=[])
        deltas = [(await anext(stream)).delta for _ in range(3)]
        await stream.aclose()
        return deltas

    asyncio.run(run())
    assert not llm.loaded_model.lock.locked()  # aclose() returns after the worker let go
    # 3 consumed, at most RUN_AHEAD produced ahead, and a token or two while stopping
    assert _evaluated_tokens(llm) <= _prompt_tokens(llm) + 3 + RUN_AHEAD + 2


def test_async_stream_break_then_loop_end_releases(tiny_llm: LlamaCPP) -> None:
    async def run() -> None:
        async for chunk in await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=1500):
            assert chunk.delta is not None
            break

    asyncio.run(run())  # asyncio.run finalises the abandoned generator
    assert _wait_unlocked(tiny_llm)


def test_cancelling_an_async_stream_task_stops_generation(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
    seen: list[int] = []

    async def consume() -> None:
        async for chunk in await llm.acomplete("Hello", stream=True, max_new_tokens=3000, stop=[]):
            seen.append(len(chunk.text))

    async def run() -> None:
        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert not llm.loaded_model.lock.locked()
    assert _evaluated_tokens(llm) < _prompt_tokens(llm) + 100  # of 3,000 allowed


def test_cancelling_acomplete_stops_generation(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)

    async def run() -> None:
        task = asyncio.create_task(llm.acomplete("Hello", max_new_tokens=3500, stop=[]))
        while not llm.loaded_model.lock.locked():
            assert not task.done(), task  # finishing (or failing) first would be a bug
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert not llm.loaded_model.lock.locked()  # the worker stopped before cancel returned
    assert _evaluated_tokens(llm) < _prompt_tokens(llm) + 100  # of 3,500 allowed


def test_same_task_second_async_call_during_open_stream_fails_clearly(tiny_llm: LlamaCPP) -> None:
    async def run() -> None:
        stream = await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=50)
        await anext(stream)
        with pytest.raises(ModelBusyError, match="unfinished async stream in this task"):
            await tiny_llm.acomplete("again", max_new_tokens=2)
        await stream.aclose()
        # once closed, the same task may call again
        assert (await tiny_llm.acomplete("again", max_new_tokens=2)).text is not None

    asyncio.run(run())
    assert not tiny_llm.loaded_model.lock.locked()


def test_blocking_call_inside_an_async_stream_on_the_same_loop_fails_clearly(
    tiny_llm: LlamaCPP,
) -> None:
    async def run() -> None:
        async for _chunk in await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=50):
            with pytest.raises(ModelBusyError, match="unfinished async stream"):
                tiny_llm.complete("again", max_new_tokens=2)
            break

    asyncio.run(run())
    assert _wait_unlocked(tiny_llm)


def test_child_task_of_a_streaming_task_fails_clearly_instead_of_waiting_forever(
    tiny_llm: LlamaCPP,
) -> None:
    async def run() -> None:
        stream = await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=50)
        await anext(stream)
        with pytest.raises(ModelBusyError, match="unfinished async stream"):
            await asyncio.wait_for(tiny_llm.acomplete("again", max_new_tokens=2), 30)
        await stream.aclose()

    asyncio.run(run())
    assert not tiny_llm.loaded_model.lock.locked()


def test_other_tasks_still_queue_behind_an_open_stream(tiny_llm: LlamaCPP) -> None:
    async def run() -> tuple[str, str]:
        go = asyncio.Event()

        async def other_request() -> str:
            await go.wait()
            return (await tiny_llm.acomplete("x", max_new_tokens=2)).text

        other = asyncio.create_task(other_request())  # not started by the streaming code
        stream = await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=5)
        first = await anext(stream)
        go.set()
        rest = "".join([c.delta async for c in stream])
        return first.delta + rest, await other

    text, other_text = asyncio.run(run())
    assert text == tiny_llm.complete("Hello", max_new_tokens=5).text
    assert other_text == tiny_llm.complete("x", max_new_tokens=2).text


def test_a_task_started_with_a_fresh_context_may_use_the_model_meanwhile(
    tiny_llm: LlamaCPP,
) -> None:
    import contextvars

    async def run() -> str:
        stream = await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=5)
        await anext(stream)
        other = asyncio.get_running_loop().create_task(
            tiny_llm.acomplete("x", max_new_tokens=2), context=contextvars.Context()
        )
        async for _ in stream:
            pass
        return (await other).text

    assert asyncio.run(run()) == tiny_llm.complete("x", max_new_tokens=2).text


@pytest.fixture(scope="module")
def slow_prompt_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider tiny model: evaluating a few thousand prompt tokens takes seconds on a CPU."""
    from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf

    spec = TinyModelSpec(n_embd=384, n_layer=6, n_head=6, n_ff=1024, name="tiny-slow-prompt")
    return build_tiny_gguf(tmp_path_factory.mktemp("slow") / "slow.gguf", spec)


@pytest.mark.parametrize("stream", [False, True], ids=["acomplete", "astream"])
def test_cancelling_during_prompt_evaluation_stops_it(
    slow_prompt_model_path: Path, stream: bool
) -> None:
    llm = LlamaCPP(model_path=str(slow_prompt_model_path), formatter="llama2", temperature=0.0)
    prompt = "hello world " * 330  # about 3,300 tokens
    prompt_tokens = llm.count_tokens(llm.format_completion(prompt))

    async def consume() -> None:
        if stream:
            async for _ in await llm.acomplete(prompt, stream=True, max_new_tokens=4):
                pass
        else:
            await llm.acomplete(prompt, max_new_tokens=4)

    async def run() -> None:
        task = asyncio.create_task(consume())
        while not llm.loaded_model.lock.locked():
            assert not task.done(), task
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert not llm.loaded_model.lock.locked()
    assert _evaluated_tokens(llm) < prompt_tokens  # stopped before the prompt was evaluated
    # and the model still works afterwards
    assert llm.complete("hello", max_new_tokens=3).raw["usage"]["completion_tokens"] == 3


def test_stream_read_through_wait_for_still_guards_its_task(tiny_llm: LlamaCPP) -> None:
    async def run() -> None:
        stream = await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=50)
        await asyncio.wait_for(anext(stream), 30)  # the first item is taken in a child task
        with pytest.raises(ModelBusyError, match="unfinished async stream"):
            await tiny_llm.acomplete("again", max_new_tokens=2)
        await stream.aclose()

    asyncio.run(run())
    assert not tiny_llm.loaded_model.lock.locked()


def test_two_streams_read_alternately_in_one_task_fail_clearly(tiny_llm: LlamaCPP) -> None:
    async def run() -> None:
        first = await tiny_llm.acomplete("one", stream=True, max_new_tokens=50)
        second = await tiny_llm.acomplete("two", stream=True, max_new_tokens=50)
        await anext(first)
        with pytest.raises(ModelBusyError, match="unfinished async stream"):
            await anext(second)
        await first.aclose()
        await second.aclose()

    asyncio.run(run())
    assert not tiny_llm.loaded_model.lock.locked()


def test_blocking_call_in_a_thread_started_by_the_streaming_task_fails_clearly(
    tiny_llm: LlamaCPP,
) -> None:
    async def run() -> None:
        async for _chunk in await tiny_llm.acomplete("Hello", stream=True, max_new_tokens=50):
            with pytest.raises(ModelBusyError, match="unfinished async stream"):
                await asyncio.to_thread(tiny_llm.complete, "again", max_new_tokens=2)
            break

    asyncio.run(run())
    assert _wait_unlocked(tiny_llm)


def test_cancelled_call_gives_up_waiting_for_a_model_held_by_another_thread(
    tiny_llm: LlamaCPP,
) -> None:
    held = threading.Event()
    release = threading.Event()

    def hold_the_model() -> None:
        stream = tiny_llm.complete("Hello", stream=True, max_new_tokens=100)
        next(stream)
        held.set()
        release.wait(60)
        stream.close()

    holder = threading.Thread(target=hold_the_model)
    holder.start()
    assert held.wait(60)

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tiny_llm.acomplete("x", max_new_tokens=2), 0.3)

    try:
        asyncio.run(run())  # returns although the model is still held
        assert tiny_llm.loaded_model.lock.locked()
    finally:
        release.set()
        holder.join()
    assert not tiny_llm.loaded_model.lock.locked()


def test_instances_built_at_once_in_threads_load_the_model_once(tiny_model_path: Path) -> None:
    barrier = threading.Barrier(4)

    def build(_: int) -> LlamaCPP:
        barrier.wait()
        return LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", context_window=768)

    with ThreadPoolExecutor(max_workers=4) as pool:
        instances = list(pool.map(build, range(4)))
    assert len({id(llm.loaded_model) for llm in instances}) == 1
