"""OpenAI-compatible server: ``serapeum-llama-cpp serve`` against llama-cpp-python's server.

    .venv/bin/python bench/bench_serve_openai.py --write    # the suite, writes its section
    .venv/bin/python bench/bench_serve_openai.py --smoke    # CI: a couple of tiny requests each

``--write`` replaces the "## OpenAI-compatible server" section of docs/benchmarks.md (or
appends it); every other section stays as it is.

Both servers serve SmolLM2-135M-Instruct (``serapeum.llama_cpp.demo.chat_model_path``) as
child processes on 127.0.0.1, started together and driven by the same ``openai`` client code,
contenders interleaved in alternating order so drift hits all alike:

- ours: ``python -m serapeum.llama_cpp serve -m PATH --ctx 2048 --temperature 0`` with
  ``--n-parallel 1`` and ``--n-parallel 4``;
- raw: ``python -m llama_cpp.server --model PATH --n_ctx 2048 --n_threads T
  --n_threads_batch T --interrupt_requests False`` (its default cuts a running stream short
  when another request arrives; queueing is what ours does).

Threads: ``--threads T`` (default 1) for both. ``serve`` has no thread option: ours loads
with a thread per CPU the process may use, so every server starts pinned to T CPUs and, once
loaded and warmed up, its threads are let onto every CPU. One thread by default because the
development machine's 2 cores are shared with other work: with 2 threads a descheduled
worker stalls every token (seconds-long outliers in trial runs).

Every request sends ``temperature=0`` and ``extra_body={"repeat_penalty": 1.0}``:
llama-cpp-python's server defaults to 1.1, ours uses 1.0 and ignores the field, so both
decode greedily with the same sampler.

1. One request at a time: ``max_tokens`` greedy answers to several short questions, not
   streamed: latency and completion tokens/s (``usage.completion_tokens`` / latency) per
   request, medians; ratios are medians of per-(repeat, question) ratios.
2. Streaming time to first token: from the ``create(stream=True)`` call to the first chunk
   with text, median and p90 (nearest rank); the stream is read to its end.
3. Four streaming clients at once (one thread each, released together): aggregate completion
   tokens/s = chunks with text / wall time from the release to the last stream's end
   (llama-cpp-python's server sends no usage in a stream; both send one token per chunk).

Answers' agreement at temperature 0 (text equality per question) is recorded, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from serapeum.llama_cpp.backend.loading import usable_cpus
from serapeum.llama_cpp.demo import chat_model_path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## OpenAI-compatible server"
CONTEXT = 2048  # per request (per slot for ours), the same for every server
READY_SECONDS = 180.0  # a guard against a server that never comes up, not a speed limit
# llama-cpp-python's server defaults to repeat_penalty 1.1; ours ignores the field (1.0).
SAME_SAMPLER = {"repeat_penalty": 1.0}
OURS_1, OURS_4, RAW = "ours, n_parallel=1", "ours, n_parallel=4", "llama-cpp-python server"
CONTENDERS = (OURS_1, OURS_4, RAW)
QUESTIONS = [
    "Describe how a lighthouse works.",
    "Explain how bees make honey.",
    "Tell me about the history of trains.",
    "How do volcanoes form?",
    "What should a beginner know about chess?",
    "Explain how coffee is grown and roasted.",
    "Why do glaciers move?",
    "How is a violin made?",
]


# -- servers -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(name: str, model: Path, port: int, threads: int) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port)]
    if name == RAW:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            *common,
            "--n_ctx",
            str(CONTEXT),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ]
    slots = "4" if name == OURS_4 else "1"
    return [
        sys.executable,
        "-m",
        "serapeum.llama_cpp",
        "serve",
        "-m",
        str(model),
        *common,
        "--n-parallel",
        slots,
        "--ctx",
        str(CONTEXT),
        "--temperature",
        "0",
    ]


@dataclass
class Server:
    """A server child process and an ``openai`` client for it."""

    name: str
    argv: list[str]
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    client: openai.OpenAI = field(init=False)
    model_id: str = field(init=False, default="")

    def wait_ready(self) -> None:
        """Poll ``GET /v1/models`` until it answers; the log tells why a server died."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.log.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(self.url + "/models", timeout=5.0)
                if response.status_code == 200:
                    self.model_id = str(response.json()["data"][0]["id"])
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.2)
        self.client = openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0)

    def widen(self, cpus: set[int]) -> None:
        """Let every thread of the loaded server run on any of ``cpus``.

        A server starts pinned to ``threads`` CPUs, so that ours, which loads with a thread
        per CPU it may use, loads with ``threads``; then the scheduler may put them anywhere.
        """
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cpus)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def servers(names: Sequence[str], model: Path, threads: int) -> Iterator[dict[str, Server]]:
    """Every contender's server, started together (loads overlap) and ready."""
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    everywhere = os.sched_getaffinity(0)
    pinned = set(sorted(everywhere)[:threads])
    started: dict[str, Server] = {}
    try:
        for index, name in enumerate(names):
            port = _free_port()
            argv = _command(name, model, port, threads)
            log = logs / f"server-{index}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    argv,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: os.sched_setaffinity(0, pinned),
                )
            started[name] = Server(name, argv, f"http://127.0.0.1:{port}/v1", process, log)
        for server in started.values():
            server.wait_ready()
            ask(server, "Hello!", 4)  # warm-up; ours loads its model on the first request
            server.widen(everywhere)
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- requests ----------------------------------------------------------------------------


def _messages(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": question}]


def ask(server: Server, question: str, tokens: int) -> dict[str, Any]:
    """One chat request, not streamed: latency, completion tokens, text."""
    start = time.perf_counter()
    reply = server.client.chat.completions.create(
        model=server.model_id,
        messages=_messages(question),
        max_tokens=tokens,
        temperature=0.0,
        extra_body=SAME_SAMPLER,
    )
    latency = time.perf_counter() - start
    assert reply.usage is not None
    return {
        "latency": latency,
        "tokens": reply.usage.completion_tokens,
        "text": reply.choices[0].message.content or "",
        "finish": reply.choices[0].finish_reason,
    }


def stream(server: Server, question: str, tokens: int) -> dict[str, Any]:
    """One streamed chat request read to its end: time to first text, chunks with text."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    chunks = server.client.chat.completions.create(
        model=server.model_id,
        messages=_messages(question),
        max_tokens=tokens,
        stream=True,
        temperature=0.0,
        extra_body=SAME_SAMPLER,
    )
    for chunk in chunks:
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            if first is None:
                first = time.perf_counter() - start
            parts.append(text)
    end = time.perf_counter()
    return {
        "ttft": first if first is not None else float("nan"),
        "end": end,
        "wall": end - start,
        "tokens": len(parts),
        "text": "".join(parts),
    }


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _orders(names: Sequence[str], index: int) -> list[str]:
    return list(names) if index % 2 == 0 else list(names)[::-1]


def _ratio(pairs: Sequence[tuple[float, float]]) -> float | None:
    return statistics.median(a / b for a, b in pairs) if pairs else None


# -- 1. one request at a time ------------------------------------------------------------


def bench_sequential(
    running: dict[str, Server], questions: Sequence[str], tokens: int, repeats: int
) -> dict[str, Any]:
    samples: dict[str, dict[tuple[int, int], dict[str, Any]]] = {name: {} for name in running}
    step = 0
    for repeat in range(repeats):
        for q, question in enumerate(questions):
            for name in _orders(list(running), step):
                samples[name][(repeat, q)] = ask(running[name], question, tokens)
            step += 1
    result: dict[str, Any] = {"per": {}}
    for name, runs in samples.items():
        values = list(runs.values())
        result["per"][name] = {
            "latency_ms": statistics.median(v["latency"] for v in values) * 1e3,
            "tps": statistics.median(v["tokens"] / v["latency"] for v in values),
            "tokens": statistics.median(v["tokens"] for v in values),
            "length_limited": sum(v["finish"] == "length" for v in values),
            "requests": len(values),
        }
    result["ratios"] = _pair_ratios(samples, lambda v: v["latency"], lambda v: v["tokens"])
    result["texts"] = {
        name: [samples[name][(0, q)]["text"] for q in range(len(questions))] for name in samples
    }
    result["agreement"] = _agreement(result["texts"])
    return result


def _pair_ratios(
    samples: dict[str, dict[Any, dict[str, Any]]],
    seconds: Callable[[dict[str, Any]], float],
    tokens: Callable[[dict[str, Any]], float],
) -> dict[str, dict[str, float | None]]:
    """Latency and tokens/s ratios, medians of matched pairs: ours/raw and ours 4 / ours 1."""
    out: dict[str, dict[str, float | None]] = {}
    for a, b in ((OURS_1, RAW), (OURS_4, RAW), (OURS_4, OURS_1)):
        if a not in samples or b not in samples:
            continue
        keys = sorted(samples[a].keys() & samples[b].keys())
        left = [samples[a][k] for k in keys]
        right = [samples[b][k] for k in keys]
        out[f"{a} / {b}"] = {
            "latency": _ratio([(seconds(x), seconds(y)) for x, y in zip(left, right, strict=True)]),
            "tps": _ratio(
                [
                    (tokens(x) / seconds(x), tokens(y) / seconds(y))
                    for x, y in zip(left, right, strict=True)
                ]
            ),
        }
    return out


def _agreement(texts: dict[str, list[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a, b in ((OURS_1, RAW), (OURS_4, RAW), (OURS_4, OURS_1)):
        if a in texts and b in texts:
            same = sum(x == y for x, y in zip(texts[a], texts[b], strict=True))
            out[f"{a} / {b}"] = f"{same}/{len(texts[a])}"
    return out


# -- 2. streaming: time to first token ---------------------------------------------------


def bench_ttft(
    running: dict[str, Server], questions: Sequence[str], tokens: int, repeats: int
) -> dict[str, Any]:
    samples: dict[str, dict[tuple[int, int], dict[str, Any]]] = {name: {} for name in running}
    step = 0
    for repeat in range(repeats):
        for q, question in enumerate(questions):
            for name in _orders(list(running), step):
                samples[name][(repeat, q)] = stream(running[name], question, tokens)
            step += 1
    result: dict[str, Any] = {"per": {}}
    for name, runs in samples.items():
        ttfts = [v["ttft"] for v in runs.values()]
        result["per"][name] = {
            "p50_ms": statistics.median(ttfts) * 1e3,
            "p90_ms": _percentile(ttfts, 0.9) * 1e3,
            "n": len(ttfts),
            "stream_tps": statistics.median(v["tokens"] / v["wall"] for v in runs.values()),
        }
    result["ratios"] = {
        key: {"ttft": value["latency"]}
        for key, value in _pair_ratios(samples, lambda v: v["ttft"], lambda v: 1.0).items()
    }
    texts = {
        name: [samples[name][(0, q)]["text"] for q in range(len(questions))] for name in samples
    }
    result["agreement"] = _agreement(texts)
    return result


# -- 3. four streaming clients at once ---------------------------------------------------


def _at_once(server: Server, questions: Sequence[str], tokens: int) -> dict[str, Any]:
    release = threading.Barrier(len(questions) + 1)
    out: list[dict[str, Any] | BaseException | None] = [None] * len(questions)

    def client(index: int) -> None:
        release.wait()
        try:
            out[index] = stream(server, questions[index], tokens)
        except BaseException as error:  # reported below
            out[index] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    release.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    results: list[dict[str, Any]] = []
    for item in out:
        if not isinstance(item, dict):
            raise RuntimeError(f"{server.name}: a client failed: {item!r}")
        results.append(item)
    wall = max(r["end"] for r in results) - start
    generated = sum(r["tokens"] for r in results)
    return {
        "wall": wall,
        "tokens": generated,
        "ttfts": [r["ttft"] for r in results],
        "texts": [r["text"] for r in results],
    }


def bench_concurrent(
    running: dict[str, Server], questions: Sequence[str], tokens: int, repeats: int
) -> dict[str, Any]:
    samples: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in running}
    for repeat in range(repeats):
        for name in _orders(list(running), repeat):
            samples[name][repeat] = _at_once(running[name], questions, tokens)
    result: dict[str, Any] = {"clients": len(questions), "per": {}}
    for name, runs in samples.items():
        values = list(runs.values())
        ttfts = [t for v in values for t in v["ttfts"]]
        result["per"][name] = {
            "tps": statistics.median(v["tokens"] / v["wall"] for v in values),
            "wall_s": statistics.median(v["wall"] for v in values),
            "tokens": statistics.median(v["tokens"] for v in values),
            "ttft_p50_ms": statistics.median(ttfts) * 1e3,
            "ttft_max_ms": max(ttfts) * 1e3,
        }
    result["ratios"] = {
        key: {"tps": value["tps"]}
        for key, value in _pair_ratios(samples, lambda v: v["wall"], lambda v: v["tokens"]).items()
    }
    result["agreement"] = _agreement({name: runs[0]["texts"] for name, runs in samples.items()})
    return result


# -- report ------------------------------------------------------------------------------


def _environment(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as handle:
        cpu = next(
            line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
        )
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("llama-cpp-python", "serapeum-llama-cpp", "openai", "uvicorn")
    )
    return (
        f"{cpu}, {os.cpu_count()} cores shared with other work, {_threads(threads)} per "
        "server; "
        f"Python {platform.python_version()}, {versions}; load average "
        f"{os.getloadavg()[1]:.1f} (5 min) at the end"
    )


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"**{value:.{digits}f}**"


def _ratios_line(ratios: dict[str, dict[str, float | None]], key: str, what: str) -> list[str]:
    cells = [f"{pair}: {_fmt(values.get(key))}" for pair, values in ratios.items()]
    return [f"{what}: " + "; ".join(cells) + "."] if cells else []


def _report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    command = ".venv/bin/python bench/bench_serve_openai.py" + (
        " --smoke" if args.smoke else " --write"
    )
    seq, ttft, conc = results["sequential"], results["ttft"], results["concurrent"]
    lines = [
        SECTION,
        "",
        f"Produced by `{command}`: SmolLM2-135M-Instruct Q4_1 (`chat_model_path()`) served by "
        "`serapeum-llama-cpp serve` (`--n-parallel 1` and `4`, `--ctx 2048`) and by "
        "llama-cpp-python's own server (`python -m llama_cpp.server --n_ctx 2048 "
        "--interrupt_requests False`, the raw equivalent), child processes on 127.0.0.1 "
        "started together and driven by the same `openai` client code, contenders "
        "interleaved in alternating order. Both servers run llama.cpp with "
        f"**{_threads(results['threads'])}** (`--n_threads`/`--n_threads_batch` for "
        "llama-cpp-python; ours, which loads with a thread per CPU it may use, starts pinned "
        "to that many CPUs and is let onto all once loaded): the 2 cores are shared with "
        "other work. Every request: `temperature=0`, `repeat_penalty` 1.0 "
        "(llama-cpp-python's server defaults to 1.1; ours ignores the field, its own is 1.0), "
        f"`max_tokens={args.tokens}`, {len(results['questions'])} different short questions.",
        "",
        f"- {results['environment']}",
        "",
        f"### One request at a time ({args.repeats} rounds of the questions, not streamed)",
        "",
        "Latency: the `create` call, client side. Tokens/s: `usage.completion_tokens` / "
        "latency, per request. Medians; ratios are medians of per-request ratios (same "
        "question, same round).",
        "",
        "| server | latency | completion tok/s | tokens (median) | answers cut by max_tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in results["contenders"]:
        p = seq["per"][name]
        lines.append(
            f"| {name} | {p['latency_ms']:.0f} ms | {p['tps']:.1f} | {p['tokens']:g} "
            f"| {p['length_limited']}/{p['requests']} |"
        )
    lines += [""]
    lines += _ratios_line(seq["ratios"], "latency", "Latency ratios (lower is faster)")
    lines += [""]
    lines += _ratios_line(seq["ratios"], "tps", "Tokens/s ratios (higher is faster)")
    lines += [
        "",
        f"### Streaming: time to first token ({args.repeats} rounds of the questions)",
        "",
        "From the `create(stream=True)` call to the first chunk with text; every stream is "
        "read to its end. p90 is nearest-rank. Stream tok/s: chunks with text / the "
        "stream's wall time (both servers send one token per chunk).",
        "",
        "| server | TTFT p50 | TTFT p90 | stream tok/s (median) |",
        "| --- | --- | --- | --- |",
    ]
    for name in results["contenders"]:
        p = ttft["per"][name]
        lines.append(
            f"| {name} | {p['p50_ms']:.0f} ms | {p['p90_ms']:.0f} ms | {p['stream_tps']:.1f} |"
        )
    lines += [""]
    lines += _ratios_line(ttft["ratios"], "ttft", "TTFT ratios, median of pairs (lower is faster)")
    lines += [
        "",
        f"### {conc['clients']} streaming clients at once ({args.concurrent_repeats} rounds)",
        "",
        f"{conc['clients']} threads, each streaming a different question, released together; "
        "aggregate completion tokens/s = chunks with text from all streams / wall time from "
        "the release to the last stream's end. llama-cpp-python's server and ours with "
        "`n_parallel=1` answer one request at a time (the others queue); ours with "
        "`n_parallel=4` decodes the four in one batch.",
        "",
        "| server | aggregate tok/s | wall | tokens | TTFT p50 / max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in results["contenders"]:
        p = conc["per"][name]
        lines.append(
            f"| {name} | {p['tps']:.1f} | {p['wall_s']:.2f} s | {p['tokens']:g} "
            f"| {p['ttft_p50_ms']:.0f} / {p['ttft_max_ms']:.0f} ms |"
        )
    lines += [""]
    lines += _ratios_line(conc["ratios"], "tps", "Aggregate tokens/s ratios (higher is faster)")
    lines += [
        "",
        "### Same answers at temperature 0 (recorded, not asserted)",
        "",
        "Text equality per question, first round.",
        "",
        "| pair | one at a time | streamed | 4 at once |",
        "| --- | --- | --- | --- |",
    ]
    for pair in seq["agreement"]:
        lines.append(
            f"| {pair} | {seq['agreement'][pair]} | {ttft['agreement'].get(pair, 'n/a')} "
            f"| {conc['agreement'].get(pair, 'n/a')} |"
        )
    lines += [
        "",
        "Ours with `n_parallel=4` decodes the four streams in one batch, and llama.cpp's "
        "batched kernels do not round exactly as a lone sequence's do, so a greedy answer "
        "may part from the lone one after some tokens; one request at a time it is the same "
        "model and the same sampler as the others.",
        "",
    ]
    return "\n".join(lines)


def _write(section: str) -> None:
    """Replace the section from its heading to the next ``## `` heading, or append it."""
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
    parser.add_argument("--smoke", action="store_true", help="a couple of tiny requests each")
    parser.add_argument("--write", action="store_true", help=f"write the section to {REPORT}")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the questions (1, 2)")
    parser.add_argument("--concurrent-repeats", type=int, default=5, help="rounds (3)")
    parser.add_argument("--clients", type=int, default=4, help="streaming clients at once (3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads per server (1: the 2 development cores are shared)",
    )
    parser.add_argument("--json", type=Path, help="also save every figure to this file")
    args = parser.parse_args(argv)
    questions = QUESTIONS
    if args.smoke:
        args.tokens, args.repeats, args.concurrent_repeats, args.clients = 8, 1, 1, 2
        questions = QUESTIONS[:2]
    threads = min(args.threads, usable_cpus())
    model = chat_model_path()
    results: dict[str, Any] = {
        "contenders": list(CONTENDERS),
        "questions": questions,
        "threads": threads,
    }
    with servers(CONTENDERS, model, threads) as running:
        results["commands"] = {name: server.argv for name, server in running.items()}
        print("[serve] one request at a time", file=sys.stderr)
        results["sequential"] = bench_sequential(running, questions, args.tokens, args.repeats)
        print(json.dumps(results["sequential"]["per"]), file=sys.stderr)
        print("[serve] streaming time to first token", file=sys.stderr)
        results["ttft"] = bench_ttft(running, questions, args.tokens, args.repeats)
        print(json.dumps(results["ttft"]["per"]), file=sys.stderr)
        print(f"[serve] {args.clients} streaming clients at once", file=sys.stderr)
        at_once = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.clients)]
        results["concurrent"] = bench_concurrent(
            running, at_once, args.tokens, args.concurrent_repeats
        )
        print(json.dumps(results["concurrent"]["per"]), file=sys.stderr)
    results["environment"] = _environment(threads)
    print(json.dumps(results, default=str), file=sys.stderr)  # every figure, for the record
    if args.json is not None:
        args.json.write_text(json.dumps(results, default=str, indent=1) + "\n")
    section = _report(args, results)
    print(section)
    if args.write and not args.smoke:
        _write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
