"""Structured-output warm-up: the first ``json_schema=`` request after load, with and without it.

    .venv/bin/python bench/bench_warmup.py            # Gemma 3 270M, prints the section
    .venv/bin/python bench/bench_warmup.py --write    # ... and writes it to docs/benchmarks.md
    .venv/bin/python bench/bench_warmup.py --smoke    # CI: tiny model, one repeat

Every scenario runs in a fresh process (it is about the first request after a load), the
scenarios alternate over the repeats, and the figures are medians. Time to first token is
from the call to the first non-empty streamed delta, greedy, the same prompt throughout:

- cold: ``SERAPEUM_STRUCTURED_WARMUP=0`` (the old behaviour: the first constrained request
  builds llguidance's tokenizer bridge itself);
- warm-up: the default (the bridge is built in the background, in steps taken while the
  process is otherwise idle); the request comes at once after load, or scheduled to arrive
  ~100 ms into the warm-up's first native step (the worst moment: that step holds the GIL,
  so the request waits for the rest of it; its time to first token counts from the
  scheduled arrival), or once the bridge is ready;
- naive: the warm-up hurried at once (no pacing), the design not taken: it runs beside the
  first request. Its whole 24-token stream is timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Structured output warm-up"
WARMUP_ENV = "SERAPEUM_STRUCTURED_WARMUP"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PROMPT = (
    "Extract the person as JSON with name, age and city.\n"
    "Text: Maria Lopez, 34, moved to Madrid last year.\nJSON:"
)
# The tiny model writes random text: only a schema with no free text ends in a few tokens.
SMOKE_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
FREE_TOKENS = 24

# name: (warm-up at load, hurry it, when the request comes, constrained)
SCENARIOS: dict[str, tuple[bool, bool, str, bool]] = {
    "cold-free": (False, False, "now", False),
    "cold-json": (False, False, "now", True),
    "warm-free-now": (True, False, "now", False),
    "warm-free-native": (True, False, "native", False),
    "warm-json-now": (True, False, "now", True),
    "warm-free-ready": (True, False, "ready", False),
    "warm-json-ready": (True, False, "ready", True),
    "naive-free-now": (True, True, "now", False),
}
NATIVE_ARRIVAL_S = 0.1  # how far into the first native step the request is scheduled


def _arrival_in_native_step(constraints: Any, n_vocab: int) -> float:
    """Wait for the pieces to be read, then until ``NATIVE_ARRIVAL_S`` into the native step.

    The warm-up waits for idle windows before it; this thread sleeps through them and
    wakes (for the GIL) during the step. Returns the scheduled arrival.
    """
    from serapeum.llama_cpp.backend import structured

    pieces_steps = -(-n_vocab // structured._PIECES_PER_STEP)
    while (pacer := constraints._pacer) is None or pacer.steps < pieces_steps:
        time.sleep(0.002)
    while pacer.phase == "pieces":
        time.sleep(0.001)
    quiet = structured._IDLE_WINDOW_SECONDS * structured._NATIVE_IDLE_WINDOWS
    arrival = time.perf_counter() + quiet + NATIVE_ARRIVAL_S
    time.sleep(max(0.0, arrival - time.perf_counter()))
    return arrival


def _child(scenario: str, model_path: str, smoke: bool) -> dict[str, Any]:
    """One scenario in this (fresh) process: load, then the first request."""
    from serapeum.llama_cpp import LlamaCPP

    _warm, hurry, when, constrained = SCENARIOS[scenario]
    started = time.perf_counter()
    llm = LlamaCPP(
        model_path=model_path,
        formatter="llama2" if smoke else "gemma",
        temperature=0.0,
        context_window=2048,
    )
    loaded = time.perf_counter()
    model = llm.loaded_model
    constraints = model.constraints  # type: ignore[attr-defined]
    if hurry:
        constraints._hurry.set()  # type: ignore[attr-defined]
    ready_after = None
    if when == "ready":
        while not constraints.ready:
            time.sleep(0.005)
        ready_after = time.perf_counter() - loaded
    options: dict[str, Any] = (
        {"json_schema": SMOKE_SCHEMA if smoke else SCHEMA, "max_new_tokens": 64}
        if constrained
        else {"max_new_tokens": FREE_TOKENS}
    )
    begin = (
        _arrival_in_native_step(constraints, model.n_vocab)  # type: ignore[attr-defined]
        if when == "native"
        else time.perf_counter()
    )
    first = None
    text = ""
    for chunk in llm.complete(PROMPT, formatted=True, stream=True, **options):
        if first is None and chunk.delta:
            first = time.perf_counter() - begin
        text = chunk.text
    total = time.perf_counter() - begin
    if constrained:
        json.loads(text)
    pacer = getattr(constraints, "_pacer", None)
    spans = list(pacer.native_spans) if pacer is not None else []
    while constraints._warmup is not None and constraints._warmup.is_alive():  # type: ignore[attr-defined]
        time.sleep(0.01)
    if pacer is not None:
        spans = list(pacer.native_spans)
    return {
        "load_s": loaded - started,
        "ttft_s": first,
        "stream_s": total,
        "ready_after_s": ready_after,
        "arrived_in_native": any(a <= begin <= b for a, b in spans),
        "native_steps_s": [round(b - a, 3) for a, b in spans],
        "pauses": pacer.pauses if pacer is not None else None,
        "text": text,
    }


def _paired(model_path: str, rounds: int, smoke: bool) -> str:
    """One process, one model with no warm-up at load; each round starts fresh warm-ups on new
    ``JsonConstraints`` and times an unconstrained request beside each (order rotated per
    round, each prompt new so none is cached). Paired rounds cancel a shared machine's drift.
    """
    os.environ[WARMUP_ENV] = "0"
    from serapeum.llama_cpp import LlamaCPP
    from serapeum.llama_cpp.backend.structured import JsonConstraints

    llm = LlamaCPP(
        model_path=model_path,
        formatter="llama2" if smoke else "gemma",
        temperature=0.0,
        context_window=2048,
    )
    model: Any = llm.loaded_model

    def request(tag: str, begin: float | None = None) -> tuple[float, float]:
        begin = time.perf_counter() if begin is None else begin
        first = None
        prompt = f"[{tag}] {PROMPT}"
        for chunk in llm.complete(prompt, formatted=True, stream=True, max_new_tokens=FREE_TOKENS):
            if first is None and chunk.delta:
                first = time.perf_counter() - begin
        return first or 0.0, time.perf_counter() - begin

    def with_warmup(tag: str, when: str) -> tuple[float, float]:
        constraints = JsonConstraints(model.vocab, model.n_vocab)
        constraints.start_warmup(keep_alive=model.llama)
        if when == "hurried":
            constraints._hurry.set()
        begin = _arrival_in_native_step(constraints, model.n_vocab) if when == "native" else None
        result = request(tag, begin)
        constraints._warmup_done.wait()
        pacer = constraints._pacer
        if pacer is not None:
            spans = [round(b - a, 2) for a, b in pacer.native_spans]
            print(f"[paired] {tag}: pauses {pacer.pauses}, native {spans}", file=sys.stderr)
        constraints.close()
        return result

    kinds = ["none", "now", "native", "hurried"]
    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    request("warm the caches")
    for index in range(rounds):
        order = kinds[index % 4 :] + kinds[: index % 4]
        for kind in order:
            tag = f"{index}-{kind}"
            times[kind].append(request(tag) if kind == "none" else with_warmup(tag, kind))
            print(f"[paired] {tag}: {times[kind][-1]}", file=sys.stderr)
    base = times["none"]

    def line(label: str, kind: str) -> str:
        ttft = statistics.median(t for t, _ in times[kind]) * 1e3
        ratio = statistics.median(t / b for (t, _), (b, _) in zip(times[kind], base, strict=True))
        stream_s = statistics.median(s for _, s in times[kind])
        return f"| {label} | {ttft:.0f} ms | {ratio:.2f} | {stream_s:.2f} s |"

    return "\n".join(
        [
            f"Paired, in one process (`bench/bench_warmup.py --paired {rounds}`, {rounds} "
            "rounds, medians; the ratio is the median of each round's ratio to its own "
            "request with no warm-up running):",
            "",
            "| unconstrained request | time to first token | / no warm-up, same round "
            f"| {FREE_TOKENS}-token stream |",
            "| --- | --- | --- | --- |",
            line("no warm-up running", "none"),
            line("at once after a warm-up starts", "now"),
            line(
                f"arriving {NATIVE_ARRIVAL_S * 1e3:.0f} ms into a native step (worst moment)",
                "native",
            ),
            line("beside a warm-up without pacing (not taken)", "hurried"),
        ]
    )


def _idle_fraction(seconds: float) -> float:
    """The share of all CPUs idle over ``seconds`` (Linux ``/proc/stat``; 1.0 elsewhere)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def _wait_for_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until others leave the CPUs ~idle: a shared machine's
    other jobs stretch llama.cpp's threads' steps many times over. Returns the idle share."""
    deadline = time.monotonic() + limit
    idle = _idle_fraction(0.5)
    while idle < 0.9 and time.monotonic() < deadline:
        idle = _idle_fraction(2.0)
    return idle


def _run(scenario: str, model_path: str, smoke: bool, quiet_wait: float) -> dict[str, Any]:
    idle = _wait_for_quiet(quiet_wait)
    warm = SCENARIOS[scenario][0]
    env = {**os.environ, WARMUP_ENV: "1" if warm else "0"}
    command = [sys.executable, __file__, "--child", scenario, "--model", model_path]
    if smoke:
        command.append("--smoke")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(
            f"{scenario} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["idle_before"] = idle
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs if run[key] is not None)


def _best(runs: list[dict[str, Any]], key: str) -> float:
    return min(run[key] for run in runs if run[key] is not None)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="seconds to wait, before each scenario, for other jobs to leave the CPUs idle",
    )
    parser.add_argument(
        "--paired", type=int, metavar="ROUNDS", help="only the paired one-process comparison"
    )
    parser.add_argument("--child", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.model, args.smoke)))
        return 0
    if args.paired:
        from serapeum.llama_cpp.demo import demo_model_path

        print(_paired(str(demo_model_path()), args.paired, smoke=False))
        return 0
    if args.smoke:
        from serapeum.llama_cpp.testing import build_tiny_gguf

        model_path = str(build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf"))
        repeats = 1
    else:
        from serapeum.llama_cpp.demo import demo_model_path

        model_path = str(demo_model_path())
        repeats = args.repeats
    names = list(SCENARIOS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            runs[name].append(
                _run(name, model_path, args.smoke, 0 if args.smoke else args.quiet_wait)
            )
            print(f"[warmup] {index + 1}/{repeats} {name}: {runs[name][-1]}", file=sys.stderr)
    ttft = {name: _median(runs[name], "ttft_s") * 1e3 for name in names}
    best = {name: _best(runs[name], "ttft_s") * 1e3 for name in names}
    worst = {name: max(run["ttft_s"] for run in runs[name]) * 1e3 for name in names}
    stream = {name: _median(runs[name], "stream_s") for name in names}
    noisy = sum(run["idle_before"] < 0.9 for name in names for run in runs[name])
    ready = _median(runs["warm-json-ready"], "ready_after_s")
    in_native = sum(run["arrived_in_native"] for run in runs["warm-free-native"])
    halves = [run["native_steps_s"] for run in runs["warm-free-ready"]]
    trie = statistics.median(steps[0] for steps in halves)
    slices = statistics.median(steps[-1] for steps in halves)
    base = ttft["cold-free"]

    def row(label: str, name: str, extra: str = "") -> str:
        return (
            f"| {label} | {ttft[name]:.0f} ms | {best[name]:.0f} ms | {worst[name]:.0f} ms "
            f"| {ttft[name] / base:.2f} | {extra} |"
        )

    def free_stream(name: str) -> str:
        return f"{FREE_TOKENS}-token stream {stream[name]:.2f} s"

    lines = [
        SECTION,
        "",
        "Produced by `.venv/bin/python bench/bench_warmup.py --write` ("
        + ("tiny model, smoke run" if args.smoke else "Gemma 3 270M Q4_K_M")
        + f", greedy, {repeats} repeats of each scenario, each a fresh process, medians). "
        "Time to first token of the first request after `LlamaCPP(...)` returns; "
        "`json_schema=` asks for a person (3 fields), the unconstrained request is the same "
        f"prompt for {FREE_TOKENS} tokens. The machine is shared: each scenario waits for "
        f"the CPUs to be idle first ({noisy} of {repeats * len(names)} runs started without).",
        "",
        "| first request after load | time to first token (median) | best | worst | median / "
        "unconstrained, cold | |",
        "| --- | --- | --- | --- | --- | --- |",
        row("unconstrained, no warm-up", "cold-free", free_stream("cold-free")),
        row("**`json_schema=`, no warm-up** (before)", "cold-json"),
        row(
            "unconstrained, at once, warm-up running",
            "warm-free-now",
            free_stream("warm-free-now"),
        ),
        row(
            f"unconstrained, arriving {NATIVE_ARRIVAL_S * 1e3:.0f} ms into a native step "
            "(worst moment)",
            "warm-free-native",
            f"{in_native} of {repeats} arrived in the step; " + free_stream("warm-free-native"),
        ),
        row(
            "unconstrained, at once, warm-up without pacing (not taken)",
            "naive-free-now",
            free_stream("naive-free-now"),
        ),
        row("`json_schema=` at once, warm-up running", "warm-json-now"),
        row(f"unconstrained, bridge ready ({ready:.2f} s after load)", "warm-free-ready"),
        row(f"**`json_schema=`, bridge ready** ({ready:.2f} s after load)", "warm-json-ready"),
        "",
        f"On an idle model the bridge is ready {ready:.2f} s after load (median); from then "
        f"the first `json_schema=` request's first token comes in {ttft['warm-json-ready']:.0f} "
        f"ms, against {ttft['warm-free-ready']:.0f} ms for an unconstrained request in the same "
        f"state and {ttft['cold-json']:.0f} ms without the warm-up. The warm-up takes no lock "
        "on the model (it only reads the vocabulary, which llama.cpp never writes after load); "
        "it runs in steps, each started only after the process's other threads have been idle "
        "for a moment (their CPU time, measured): about 10 ms of reading the vocabulary each, "
        f"then llguidance's native build in two halves (the token trie, {trie:.2f} s, then the "
        f"slices, {slices:.2f} s: medians), which hold the GIL throughout. An unconstrained "
        "request right after load finds it paused "
        f"({ttft['warm-free-now']:.0f} vs {ttft['cold-free']:.0f} ms to the first token, its "
        f"stream {stream['warm-free-now']:.2f} vs {stream['cold-free']:.2f} s); one that "
        "arrives during a native half waits for the rest of that half only "
        f"({ttft['warm-free-native']:.0f} ms median, worst {worst['warm-free-native']:.0f} ms), "
        "then the warm-up pauses until it is done. Run beside it without pacing (the row not "
        f"taken), the warm-up stretches that stream to {stream['naive-free-now']:.2f} s. A "
        "`json_schema=` request that comes before the bridge is ready hurries the warm-up and "
        f"waits for the rest of it (at once after load: {ttft['warm-json-now']:.0f} ms, as "
        "without the warm-up): the warm-up pays off when the model has about two idle seconds "
        "after load. Not cached on disk: llguidance's tokenizer has no serialised form, and "
        "the Python part that could be cached is a third of the cost. The bridge holds "
        "~110 MiB for Gemma's 262,144 tokens; "
        f"`{WARMUP_ENV}=0` skips the warm-up (the first constrained request builds it).",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        existing = REPORT.read_text() if REPORT.exists() else ""
        head, found, rest = existing.partition(SECTION)
        if found:  # replace ours, keep the sections after it
            after = rest.find("\n## ")
            tail = "\n" + rest[after + 1 :] if after >= 0 else ""
            REPORT.write_text(head.rstrip() + "\n\n" + section + tail)
        else:  # append at the end
            REPORT.write_text(existing.rstrip() + "\n\n" + section)
        print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
