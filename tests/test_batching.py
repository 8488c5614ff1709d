"""Continuous batching (``n_parallel``) on real llama.cpp inference: issue 12's acceptance.

Requests batched together must be isolated and deterministic (greedy): copies of one prompt
agree, and a request's text does not depend on its companions. Streams, usage, stop
sequences, ``max_new_tokens``, JSON Schema constraints and logprobs work per sequence;
cancelling one request leaves the others' texts as they were and frees its slot; the queue
is bounded; a long prompt is evaluated in chunks beside running streams.

Most tests run the tiny random-weight model (fast, and its greedy texts are distinct per
prompt). Its context is small; where a request must hold a slot for a while it asks for
thousands of tokens and is then cancelled. No assertion is about wall-clock time: the
scheduler's own counters (``steps``, ``largest_prefill_beside_generation``) are read instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import ArgumentTypeError, ConfigurationError, SerapeumError
from serapeum.core.llms import CompletionResponse, FinishReason
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.scheduler import BatchScheduler
from serapeum.llama_cpp.errors import QueueFullError

jsonschema = pytest.importorskip("jsonschema")

PROMPTS = ("Hello there", "Tell me", "Cats and dogs", "Numbers 1 2 3")
OTHERS = ("Red green blue", "Once upon a time", "Why is the sky", "Good morning")
# Long enough to keep a slot busy for the whole test (it is cancelled, never finished).
HOLD_TOKENS = 3000


def _tiny(path: Path, **kwargs: Any) -> LlamaCPP:
    settings: dict[str, Any] = {
        "formatter": "llama2",
        "temperature": 0.0,
        "context_window": 512,
        "max_new_tokens": 24,
    }
    settings.update(kwargs)
    return LlamaCPP(model_path=str(path), **settings)


def _scheduler(llm: LlamaCPP) -> BatchScheduler:
    scheduler = llm.loaded_model.scheduler  # type: ignore[attr-defined]
    assert isinstance(scheduler, BatchScheduler)
    return scheduler


def _together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on threads released at once (so they share the batch), in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _text(llm: LlamaCPP, prompt: str, **kwargs: Any) -> str:
    return llm.complete(prompt, **kwargs).text


def _wait_idle(scheduler: BatchScheduler) -> int:
    """The step count once it stops growing (the loop has nothing left to decode)."""
    last = -1
    for _ in range(200):
        steps = scheduler.steps
        if steps == last:
            return steps
        last = steps
        time.sleep(0.1)
    raise AssertionError("the scheduler kept stepping with no request running")


def _wait_queued(scheduler: BatchScheduler, count: int) -> None:
    """Until ``count`` requests wait for a slot (read from the scheduler's private queue:
    a waiting request shows no other sign)."""
    for _ in range(500):
        if len(scheduler._queue) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} requests never queued")


def _held(llm: LlamaCPP, prompt: str) -> Generator[CompletionResponse, None, None]:
    """A stream that holds a slot: submitted (its first chunk read), generating for long."""
    stream = llm.complete(prompt, max_new_tokens=HOLD_TOKENS, stream=True)
    assert isinstance(stream, Generator)
    next(stream)
    return stream


@pytest.fixture(scope="module")
def batched(tiny_model_path: Path) -> LlamaCPP:
    return _tiny(tiny_model_path, n_parallel=4)


@pytest.fixture(scope="module")
def solo_texts(tiny_model_path: Path) -> dict[str, str]:
    """Each prompt's greedy text, one request at a time on the batched model."""
    llm = _tiny(tiny_model_path, n_parallel=4)
    return {prompt: llm.complete(prompt).text for prompt in (*PROMPTS, *OTHERS)}


# -- determinism and isolation ----------------------------------------------------------
def test_four_copies_on_threads_give_one_text(batched: LlamaCPP) -> None:
    responses = _together([lambda: batched.complete(PROMPTS[0])] * 4)
    texts = {response.text for response in responses}
    assert len(texts) == 1 and texts != {""}
    assert all(r.finish_reason is FinishReason.LENGTH for r in responses)
    assert all(r.usage is not None and r.usage.completion_tokens == 24 for r in responses)


def test_four_copies_with_asyncio_gather_give_one_text(batched: LlamaCPP) -> None:
    async def main() -> list[CompletionResponse]:
        return await asyncio.gather(*(batched.acomplete(PROMPTS[1]) for _ in range(4)))

    texts = {response.text for response in asyncio.run(main())}
    assert len(texts) == 1 and texts != {""}


def test_a_text_does_not_depend_on_its_companions(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    target = PROMPTS[2]
    with_prompts = _together([partial(_text, batched, p) for p in PROMPTS])
    with_others = _together([partial(_text, batched, p) for p in (OTHERS[0], target, *OTHERS[2:])])
    assert with_prompts[2] == with_others[1]
    # On this tiny CPU model the batched text also equals the one-at-a-time text (issue 12
    # does not require it; it helps to see which companion would have disturbed it).
    assert with_prompts == [solo_texts[p] for p in PROMPTS]
    assert with_others[0] == solo_texts[OTHERS[0]]


# -- per-sequence features ---------------------------------------------------------------
def test_concurrent_streams_each_get_their_own_text(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    def stream(prompt: str) -> tuple[str, list[CompletionResponse]]:
        chunks = list(batched.complete(prompt, stream=True))
        return prompt, chunks

    for prompt, chunks in _together([partial(stream, p) for p in PROMPTS]):
        text = "".join(chunk.delta or "" for chunk in chunks)
        assert text == chunks[-1].text == solo_texts[prompt]
        last = chunks[-1]
        assert last.finish_reason is FinishReason.LENGTH
        assert last.usage is not None and last.usage.completion_tokens == 24
        assert all(chunk.usage is None for chunk in chunks[:-1])


def test_concurrent_async_streams(batched: LlamaCPP, solo_texts: dict[str, str]) -> None:
    async def stream(prompt: str) -> str:
        text = ""
        async for chunk in await batched.acomplete(prompt, stream=True):
            text += chunk.delta or ""
        return text

    async def main() -> list[str]:
        return await asyncio.gather(*(stream(p) for p in PROMPTS))

    assert asyncio.run(main()) == [solo_texts[p] for p in PROMPTS]


def test_usage_figures_per_request(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2, max_queue=7)  # a model of its own: empty cache
    prompts = ("Alpha beta gamma", "Quite another prompt here")
    first = _together(
        [partial(llm.complete, p, max_new_tokens=5 + i) for i, p in enumerate(prompts)]
    )
    for i, (prompt, response) in enumerate(zip(prompts, first, strict=True)):
        assert response.usage is not None
        assert response.usage.prompt_tokens == len(llm.tokenize(llm.format_completion(prompt)))
        assert response.usage.completion_tokens == 5 + i
        assert response.usage.cached_prompt_tokens == 0
        assert response.raw["usage"]["prompt_tokens"] == response.usage.prompt_tokens


def test_stop_sequences_and_max_new_tokens_per_request(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    stopped_prompt, short_prompt, plain_prompt = PROMPTS[1], PROMPTS[2], PROMPTS[3]
    full = solo_texts[stopped_prompt]
    stop = full[6:9]
    expected = full[: full.index(stop)]
    stopped, short, plain = _together(
        [
            lambda: batched.complete(stopped_prompt, stop=[stop]),
            lambda: batched.complete(short_prompt, max_new_tokens=3),
            lambda: batched.complete(plain_prompt),
        ]
    )
    assert stopped.text == expected and stopped.finish_reason is FinishReason.STOP
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert short.finish_reason is FinishReason.LENGTH
    assert solo_texts[short_prompt].startswith(short.text)
    assert plain.text == solo_texts[plain_prompt]


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
COLOURS = {
    "type": "object",
    "properties": {
        "colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["colours", "ok"],
    "additionalProperties": False,
}


def test_two_constrained_requests_with_different_schemas(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    person, colours, plain = _together(
        [
            lambda: batched.complete("A person:", json_schema=PERSON, max_new_tokens=120),
            lambda: batched.complete("Colours:", json_schema=COLOURS, max_new_tokens=120),
            lambda: batched.complete(PROMPTS[0]),
        ]
    )
    jsonschema.validate(json.loads(person.text), PERSON)
    jsonschema.validate(json.loads(colours.text), COLOURS)
    assert person.finish_reason is FinishReason.STOP
    assert colours.finish_reason is FinishReason.STOP
    assert plain.text == solo_texts[PROMPTS[0]]  # the unconstrained companion is untouched


def test_logprobs_in_a_batch(batched: LlamaCPP, solo_texts: dict[str, str]) -> None:
    inspected, plain = _together(
        [
            lambda: batched.complete(PROMPTS[0], max_new_tokens=6, logprobs=3),
            lambda: batched.complete(PROMPTS[1]),
        ]
    )
    logprobs = inspected.raw["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 6
    assert all(len(top) == 3 for top in logprobs["top_logprobs"])
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    # greedy: each picked token is its row's most likely one
    for lp, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert lp == pytest.approx(max(top.values()))
    assert solo_texts[PROMPTS[0]].startswith(inspected.text)
    assert plain.text == solo_texts[PROMPTS[1]]


# -- cancellation --------------------------------------------------------------------------
def _others_while(
    llm: LlamaCPP, disturb: Callable[[], None], prompts: tuple[str, ...] = PROMPTS[:3]
) -> list[str]:
    """The texts of ``prompts`` run while ``disturb`` runs on another thread."""
    return _together([disturb, *(partial(_text, llm, p) for p in prompts)])[1:]


def test_breaking_out_of_a_stream_frees_its_slot(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    scheduler = _scheduler(batched)

    def disturb() -> None:
        for _chunk in batched.complete(OTHERS[1], max_new_tokens=HOLD_TOKENS, stream=True):
            break  # the for loop's iterator is dropped here: the stream closes

    start = _wait_idle(scheduler)
    assert _others_while(batched, disturb) == [solo_texts[p] for p in PROMPTS[:3]]
    after = batched.complete(PROMPTS[3])  # a later request gets a slot
    assert after.text == solo_texts[PROMPTS[3]]
    # The abandoned request stopped: far fewer steps than its HOLD_TOKENS ran.
    assert _wait_idle(scheduler) - start < HOLD_TOKENS // 2


def test_closing_a_stream_frees_its_slot(batched: LlamaCPP, solo_texts: dict[str, str]) -> None:
    scheduler = _scheduler(batched)
    start = _wait_idle(scheduler)
    stream = _held(batched, OTHERS[2])
    texts = [batched.complete(p).text for p in PROMPTS[:3]]  # beside the held stream
    stream.close()
    assert texts == [solo_texts[p] for p in PROMPTS[:3]]
    assert _wait_idle(scheduler) - start < HOLD_TOKENS // 2


def test_cancel_token_stops_one_request(batched: LlamaCPP, solo_texts: dict[str, str]) -> None:
    scheduler = _scheduler(batched)
    start = _wait_idle(scheduler)
    cancel = CancelToken()
    results: list[CompletionResponse] = []
    thread = threading.Thread(
        target=lambda: results.append(
            batched.complete(OTHERS[3], max_new_tokens=HOLD_TOKENS, cancel=cancel)
        )
    )
    thread.start()
    texts = [batched.complete(p).text for p in PROMPTS[:3]]
    cancel.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    (cancelled,) = results
    assert cancelled.finish_reason is FinishReason.CANCELLED
    assert cancelled.usage is not None and 0 < cancelled.usage.completion_tokens < HOLD_TOKENS
    assert texts == [solo_texts[p] for p in PROMPTS[:3]]
    assert _wait_idle(scheduler) - start < HOLD_TOKENS // 2
    assert batched.complete(PROMPTS[3]).text == solo_texts[PROMPTS[3]]


def test_cancelling_an_asyncio_task_stops_only_its_request(
    batched: LlamaCPP, solo_texts: dict[str, str]
) -> None:
    scheduler = _scheduler(batched)
    start = _wait_idle(scheduler)

    async def main() -> list[str]:
        doomed = asyncio.create_task(batched.acomplete(OTHERS[0], max_new_tokens=HOLD_TOKENS))
        others = [asyncio.create_task(batched.acomplete(p)) for p in PROMPTS[:3]]
        while scheduler.steps <= start + 2:  # the doomed request is generating
            await asyncio.sleep(0.002)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return [(await task).text for task in others]

    assert asyncio.run(main()) == [solo_texts[p] for p in PROMPTS[:3]]
    assert _wait_idle(scheduler) - start < HOLD_TOKENS // 2


def test_cancel_while_queued(tiny_model_path: Path, solo_texts: dict[str, str]) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2, context_window=4096, max_queue=5)
    scheduler = _scheduler(llm)
    holders = [_held(llm, OTHERS[0]), _held(llm, OTHERS[1])]
    cancel = CancelToken()
    results: list[CompletionResponse] = []
    thread = threading.Thread(
        target=lambda: results.append(llm.complete(PROMPTS[0], cancel=cancel))
    )
    thread.start()
    _wait_queued(scheduler, 1)
    cancel.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    (queued,) = results
    assert queued.text == "" and queued.finish_reason is FinishReason.CANCELLED
    assert queued.usage is not None and queued.usage.completion_tokens == 0
    for stream in holders:
        stream.close()
    _wait_idle(scheduler)
    assert llm.complete(PROMPTS[0]).text == solo_texts[PROMPTS[0]]


# -- the queue -------------------------------------------------------------------------------
def test_queue_full_error_is_clear(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=1, max_sessions=1, max_queue=1, context_window=4096)
    scheduler = _scheduler(llm)
    holder = _held(llm, OTHERS[0])
    waiting: list[CompletionResponse] = []
    thread = threading.Thread(target=lambda: waiting.append(llm.complete(PROMPTS[0])))
    thread.start()
    _wait_queued(scheduler, 1)
    with pytest.raises(QueueFullError) as raised:
        llm.complete(PROMPTS[1])
    with pytest.raises(QueueFullError):
        next(llm.complete(PROMPTS[1], stream=True))  # a stream is refused at its first next()
    error = raised.value
    assert isinstance(error, SerapeumError) and isinstance(error, RuntimeError)
    assert error.queued == 1
    message = str(error)
    assert "max_queue=1" in message and "1 slots" in message and "n_parallel" in message
    holder.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and waiting[0].usage is not None
    assert waiting[0].usage.completion_tokens == 24
    assert llm.complete(PROMPTS[1]).text  # the queue has room again


def test_default_instance_has_no_scheduler(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path)
    assert llm.loaded_model.scheduler is None  # type: ignore[attr-defined]
    assert llm.loaded_model.batching is None  # type: ignore[attr-defined]
    assert not llm.loaded_model.capabilities.concurrent
    assert llm.complete(PROMPTS[0]).usage is not None


def test_a_batched_model_is_freed_with_its_last_instance(tiny_model_path: Path) -> None:
    import gc
    import weakref

    llm = _tiny(tiny_model_path, n_parallel=2, max_queue=31)
    llm.complete(PROMPTS[0], max_new_tokens=2)
    model = weakref.ref(llm.loaded_model)
    del llm
    gc.collect()
    assert model() is None


def test_batched_model_settings(batched: LlamaCPP) -> None:
    settings = batched.loaded_model.batching  # type: ignore[attr-defined]
    assert (settings.n_parallel, settings.max_sessions, settings.n_ctx_seq) == (4, 64, 512)
    assert settings.max_queue == 64 and settings.prefill_chunk == 256
    assert batched.metadata.context_window == 512  # one conversation's window, not the cache's


# -- chunked prefill ---------------------------------------------------------------------
def test_a_long_prompt_is_evaluated_in_chunks_beside_a_stream(tiny_model_path: Path) -> None:
    llm = _tiny(tiny_model_path, n_parallel=2, context_window=2048, max_queue=9)
    scheduler = _scheduler(llm)
    long_prompt = " ".join(f"word{i} apple" for i in range(130))
    assert llm.count_tokens(llm.format_completion(long_prompt)) > 600
    expected_long = llm.complete(long_prompt).text
    expected_stream = llm.complete(PROMPTS[0], max_new_tokens=400).text
    _wait_idle(scheduler)
    assert scheduler.largest_prefill_beside_generation == 0  # nothing ran beside anything yet

    stream = llm.complete(PROMPTS[0], max_new_tokens=400, stream=True)
    streamed = next(stream).delta or ""
    # Another model instance's cache would not be this one's: make the long prompt new
    # to the cache by prefixing it, so its whole prompt is evaluated beside the stream.
    fresh_long = "Note. " + long_prompt
    long_answer = llm.complete(fresh_long)
    streamed += "".join(chunk.delta or "" for chunk in stream)
    assert 0 < scheduler.largest_prefill_beside_generation <= 256
    assert streamed == expected_stream
    assert long_answer.usage is not None
    assert long_answer.usage.prompt_tokens - long_answer.usage.cached_prompt_tokens > 256
    assert long_answer.text == llm.complete(fresh_long).text  # and equals it undisturbed
    assert expected_long  # the unprefixed prompt ran too


# -- option errors -------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_invalid_n_parallel(tiny_model_path: Path, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="n_parallel"):
        _tiny(tiny_model_path, n_parallel=value)


@pytest.mark.parametrize(("name", "value"), [("max_sessions", -1), ("max_queue", -2)])
def test_invalid_counts(tiny_model_path: Path, name: str, value: int) -> None:
    with pytest.raises(ConfigurationError, match=name):
        _tiny(tiny_model_path, n_parallel=2, **{name: value})


def test_queue_options_need_a_batched_model(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_queue is only used by a model with slots"):
        _tiny(tiny_model_path, max_queue=3)
    with pytest.raises(ConfigurationError, match="saved_sessions_bytes is only used"):
        _tiny(tiny_model_path, saved_sessions_bytes=0)
    with pytest.raises(ConfigurationError, match="kv_unified is only used"):
        _tiny(tiny_model_path, kv_unified=True)


def test_one_kv_buffer_for_all_slots_serves_them_too(
    tiny_model_path: Path, solo_texts: dict[str, str]
) -> None:
    """kv_unified=True: the sequences share one KV buffer (n_parallel windows of cells);
    each still gets its own answer and its own reuse."""
    llm = _tiny(tiny_model_path, n_parallel=4, kv_unified=True, max_queue=13)
    texts = _together([partial(_text, llm, p) for p in PROMPTS])
    assert texts == [solo_texts[p] for p in PROMPTS]  # the tiny model's F32 kernels agree
    again = llm.complete(PROMPTS[0] + " " + texts[0])
    assert again.usage is not None and again.usage.cached_prompt_tokens > 0


def test_server_backend_refuses_batching_options() -> None:
    with pytest.raises(ConfigurationError, match="n_parallel, max_sessions"):
        LlamaCPP(server_urls=["http://127.0.0.1:9"], n_parallel=2, max_sessions=3)


def test_session_argument_checks(batched: LlamaCPP, tiny_model_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match="session must be a str"):
        batched.complete(PROMPTS[0], session=123)
    with pytest.raises(ConfigurationError, match="session"):
        batched.complete(PROMPTS[0], session="")
    with pytest.raises(ConfigurationError, match="max_sessions"):
        _tiny(tiny_model_path).complete(PROMPTS[0], session="a")


# -- Gemma 3 270M: a real model's batched kernels --------------------------------------------
GEMMA_PROMPTS = (
    "Q: What is the capital of France?\nA:",
    "Q: Name three colours.\nA:",
    "Q: Write one sentence about the sea.\nA:",
    "Q: What is 12 times 12?\nA:",
)


def test_gemma_copies_agree_and_ignore_their_companions(gemma_model_path: Path) -> None:
    """On a real quantized model, four copies of a prompt started together give one text.

    Each sequence has a KV stream of its own: with one unified cache the copies' cells sat
    at different offsets and the attention kernels rounded each differently. What is left
    is the matrix kernels': llama.cpp's CPU kernels for quantized weights (Q5_0/Q8_0 tiles,
    repacked Q4_K row groups) round a row differently with its place and the batch's size,
    so a prompt among others keeps its confident start, not always every low-margin pick
    (llama-server at -np 4 does the same; see docs/concurrency.md)."""
    llm = LlamaCPP(
        model_path=str(gemma_model_path),
        temperature=0.0,
        max_new_tokens=48,
        context_window=1024,
        n_parallel=4,
    )
    for target in GEMMA_PROMPTS[1:3]:
        copies = _together([partial(_text, llm, target, formatted=True)] * 4)
        assert len(set(copies)) == 1, copies
    mixed = _together([partial(_text, llm, p, formatted=True) for p in GEMMA_PROMPTS])
    reversed_mix = _together([partial(_text, llm, p, formatted=True) for p in GEMMA_PROMPTS[::-1]])
    assert mixed[0].strip().splitlines()[0] == "The capital of France is Paris."
    assert reversed_mix[-1].strip().splitlines()[0] == "The capital of France is Paris."
