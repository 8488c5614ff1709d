"""Sampling cost: the fast sampler vs greedy's argmax vs llama.cpp's sampler chain.

    .venv/bin/python bench/bench_sampling.py --write    # Gemma 3 270M; appends "## Sampling"
    .venv/bin/python bench/bench_sampling.py --smoke    # CI: a tiny wide-vocabulary model

1. µs per pick on Gemma 3 270M's real logits (262,144 of them), at 24 positions of a
   sampled continuation: greedy (numpy's argmax of the logits view, as the loop does),
   the fast sampler at the seed's defaults (temperature 0.75 and ``SamplerSettings``'
   top-k 40, top-p 0.95, min-p 0.05) and with top-p 0.9, and llama.cpp's chain
   (``llama_sampler_sample``, which copies every logit into candidates first). Two
   conditions: one pick right after the decode that produced the logits (as in the loop
   on a CPU), and many picks on the same logits (warm caches, as when decoding runs on a
   GPU). Alternating order; medians of per-position ratios. Then, warm, ``choose_batch``
   over ``--batch-rows`` rows of those real logits vs ``argmax(axis=1)``, µs per row.
2. Tokens/s over 128 tokens at temperature 0.75, top-p 0.9 from an empty KV cache:
   ``LlamaCPP.complete`` (fast sampler), the same with the loop sent to llama.cpp's chain, raw
   ``Llama.create_completion`` (same model object, same settings and seed), and ours greedy
   for reference; ``--repeats`` interleaved runs in alternating order, medians of per-run
   ratios; and per token, the time besides ``llama_decode`` (``native_probe.py``).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from native_probe import NativeProbe

from serapeum.core.plugins import get_plugin_host
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend import generation
from serapeum.llama_cpp.backend.fast_sampler import FastSampler, choose_batch
from serapeum.llama_cpp.backend.sampling import SamplerSettings, build_sampler
from serapeum.llama_cpp.demo import demo_model_path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Sampling"
FORMATTER = "gemma"
PROMPT = "Write a long story about a lighthouse keeper who finds a map. Once upon a time,"
COUNTING = "1, 2, 3, 4, 5,"  # Gemma 3 270M keeps counting, sampled or not
DEFAULTS: dict[str, Any] = {"temperature": 0.75, "top_p": 0.9}  # the tokens/s runs
SETTINGS: dict[
    str, dict[str, Any]
] = {  # the picks' settings (``SamplerSettings`` has top-k 40, min-p 0.05)
    "defaults": {"temperature": 0.75},  # the seed's defaults: top-p 0.95
    "top-p 0.9": {"temperature": 0.75, "top_p": 0.9},
}
TARGET = 1.2  # fast pick / greedy pick
BATCHES = 5


def _wide_tiny_model() -> Path:
    """The tiny random-weight model with 40,000 extra tokens (above the fast-sampler size)."""
    from serapeum.llama_cpp.testing import (
        SPECIAL_TOKENS,
        TinyModelSpec,
        Vocabulary,
        build_tiny_gguf,
    )

    tokens = ["<unk>", *SPECIAL_TOKENS, *(f"<0x{byte:02X}>" for byte in range(256))]
    types = [2] + [3] * len(SPECIAL_TOKENS) + [6] * 256
    words = ["\u2581", *string.printable[:94], *(f"\u2581w{i}" for i in range(40_000))]
    scores = [0.0] * len(tokens) + [float(len(word)) for word in words]
    spec = TinyModelSpec(
        name="serapeum-tiny-wide",
        vocabulary=Vocabulary(
            tokens=(*tokens, *words), scores=tuple(scores), types=(*types, *[1] * len(words))
        ),
    )
    return build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny-wide.gguf", spec)


def _cold(llm: LlamaCPP) -> None:
    """Empty the KV cache, so every contender evaluates the whole prompt."""
    llama = llm.loaded_model.llama  # type: ignore[attr-defined]
    llama.reset()
    llama._ctx.kv_cache_clear()


def bench_picks(llm: LlamaCPP, positions: int, inner: int, batch_rows: int) -> dict[str, Any]:
    """µs per pick at ``positions`` successive positions of a sampled continuation, in two
    conditions: right after the decode that produced the logits (as in the loop on a CPU,
    where decoding streams the weights through the caches) and repeated on the same logits
    (caches warm: what a pick costs when decoding runs elsewhere, e.g. on a GPU). Then,
    warm, ``choose_batch`` over ``batch_rows`` rows of real logits vs ``argmax(axis=1)``."""
    import llama_cpp as lib
    import numpy as np

    model = llm.loaded_model
    llama = model.llama  # type: ignore[attr-defined]
    n_vocab = model.n_vocab  # type: ignore[attr-defined]
    logits_of = model.last_logits  # type: ignore[attr-defined]
    last_n = llama.last_n_tokens_size
    samplers = {
        name: FastSampler(SamplerSettings(**options), n_vocab=n_vocab, seed=1, last_n=last_n)
        for name, options in SETTINGS.items()
    }
    chain = build_sampler(
        SamplerSettings(**SETTINGS["defaults"]), vocab=None, n_vocab=n_vocab, seed=1, last_n=last_n
    )
    ctx = llama.ctx
    sample = lib.llama_sampler_sample

    def greedy() -> int:
        return int(logits_of().argmax())

    def fast(sampler: FastSampler) -> Callable[[], int]:
        return lambda: sampler.choose(logits_of())

    def chain_pick() -> int:
        return int(sample(chain, ctx, -1))

    contenders: dict[str, Callable[[], int]] = {
        "greedy": greedy,
        **{f"fast {name}": fast(sampler) for name, sampler in samplers.items()},
        "chain": chain_pick,
    }
    cold: dict[str, list[float]] = {name: [] for name in contenders}
    warm: dict[str, list[float]] = {name: [] for name in contenders}
    rows: list[Any] = []  # real logits rows, for the batch
    clock = time.perf_counter
    per_batch = max(inner // BATCHES, 1)
    _cold(llm)
    llama.eval(llm.tokenize(PROMPT))
    last = llama.input_ids[llama.n_tokens - 1]
    try:
        for _ in range(positions):
            # after a decode: decode the last token again (same logits), then one pick
            times: dict[str, list[float]] = {name: [] for name in contenders}
            for repeat in range(BATCHES):
                names = list(contenders) if repeat % 2 == 0 else list(contenders)[::-1]
                for name in names:
                    llama.n_tokens -= 1
                    llama.eval([last])
                    start = clock()
                    contenders[name]()
                    times[name].append(clock() - start)
            for name, values in times.items():
                cold[name].append(statistics.median(values) * 1e6)
            # warm: the fastest of BATCHES batches of picks on the same logits
            best = dict.fromkeys(contenders, float("inf"))
            for repeat in range(BATCHES):
                names = list(contenders) if repeat % 2 == 0 else list(contenders)[::-1]
                for name in names:
                    pick = contenders[name]
                    start = clock()
                    for _ in range(per_batch):
                        pick()
                    best[name] = min(best[name], (clock() - start) / per_batch * 1e6)
            for name, value in best.items():
                warm[name].append(value)
            rows.append(np.array(logits_of(), dtype=np.float32))
            last = samplers["defaults"].choose(logits_of())
            llama.eval([last])
    finally:
        for sampler in samplers.values():
            sampler.close()
        lib.llama_sampler_free(chain)
        _cold(llm)

    def summary(per_position: dict[str, list[float]]) -> dict[str, Any]:
        ratios = {
            name: statistics.median(
                a / b for a, b in zip(per_position[name], per_position["greedy"], strict=True)
            )
            for name in per_position
            if name != "greedy"
        }
        us = {name: statistics.median(values) for name, values in per_position.items()}
        return {"us": us, "vs_greedy": ratios}

    return {
        "after_decode": summary(cold),
        "warm": summary(warm),
        "batch": _bench_batch(rows, batch_rows, inner, n_vocab, last_n),
        "positions": positions,
        "inner": inner,
    }


def _bench_batch(
    rows: list[Any], batch_rows: int, inner: int, n_vocab: int, last_n: int
) -> dict[str, Any]:
    """Warm µs per row: ``choose_batch`` vs ``argmax(axis=1)``, over windows of
    ``batch_rows`` successive positions' real logits (fastest of 3 * BATCHES batches each)."""
    import numpy as np

    per_batch = max(inner // BATCHES // batch_rows, 1)
    tries = 3 * BATCHES  # fewer windows than positions: more tries each, against the noise
    clock = time.perf_counter
    ratios: dict[str, list[float]] = {name: [] for name in SETTINGS}
    us: dict[str, list[float]] = {"argmax": [], **{name: [] for name in SETTINGS}}
    for first in range(0, len(rows) - batch_rows + 1, batch_rows):
        logits = np.stack(rows[first : first + batch_rows])
        samplers = {
            name: [
                FastSampler(SamplerSettings(**options), n_vocab=n_vocab, seed=i, last_n=last_n)
                for i in range(batch_rows)
            ]
            for name, options in SETTINGS.items()
        }
        contenders: dict[str, Callable[[], Any]] = {
            "argmax": functools.partial(logits.argmax, axis=1),
            **{
                name: functools.partial(choose_batch, batch, logits)
                for name, batch in samplers.items()
            },
        }
        best = dict.fromkeys(contenders, float("inf"))
        for repeat in range(tries):
            names = list(contenders) if repeat % 2 == 0 else list(contenders)[::-1]
            for name in names:
                run = contenders[name]
                start = clock()
                for _ in range(per_batch):
                    run()
                best[name] = min(best[name], (clock() - start) / per_batch / batch_rows * 1e6)
        for name, value in best.items():
            us[name].append(value)
        for name in SETTINGS:
            ratios[name].append(best[name] / best["argmax"])
        for batch in samplers.values():
            for sampler in batch:
                sampler.close()
    return {
        "rows": batch_rows,
        "windows": len(us["argmax"]),
        "us": {name: statistics.median(values) for name, values in us.items()},
        "vs_greedy": {name: statistics.median(values) for name, values in ratios.items()},
    }


def bench_tokens_per_second(
    llm: LlamaCPP, tokens: int, repeats: int, formatter: str = FORMATTER
) -> dict[str, Any]:
    """Tokens/s from an empty KV cache at the seed's defaults, four ways."""
    llama = llm.loaded_model.llama  # type: ignore[attr-defined]
    prompt_tokens = llm.tokenize(COUNTING)
    # LlamaCPP adds the formatter's end-of-turn markers to the stop sequences; the raw
    # call gets the same list, so both do the same per-token stop checks.
    stop = list(get_plugin_host().formatters.get(formatter).stop)
    settings = SamplerSettings(**DEFAULTS)

    def ours(**options: Any) -> Callable[[int], tuple[str, int]]:
        def run(seed: int) -> tuple[str, int]:
            _cold(llm)
            response = llm.complete(
                COUNTING, formatted=True, max_new_tokens=tokens, seed=seed, **options
            )
            assert response.usage is not None
            return response.text, response.usage.completion_tokens

        return run

    def ours_chain(seed: int) -> tuple[str, int]:
        saved = generation.FAST_SAMPLER_MIN_VOCAB
        generation.FAST_SAMPLER_MIN_VOCAB = 1 << 62  # the loop's size switch: chain always
        try:
            return ours(**DEFAULTS)(seed)
        finally:
            generation.FAST_SAMPLER_MIN_VOCAB = saved

    def raw(seed: int) -> tuple[str, int]:
        _cold(llm)
        result = llama.create_completion(
            prompt_tokens,
            max_tokens=tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=settings.min_p,
            seed=seed,
            stop=stop,
        )
        return result["choices"][0]["text"], result["usage"]["completion_tokens"]

    runs: dict[str, Callable[[int], tuple[str, int]]] = {
        "ours": ours(**DEFAULTS),
        "ours_chain": ours_chain,
        "raw": raw,
        "ours_greedy": ours(temperature=0.0),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, list[str]] = {name: [] for name in runs}
    counts: dict[str, list[int]] = {name: [] for name in runs}
    for index in range(repeats):
        names = list(runs) if index % 2 == 0 else list(runs)[::-1]
        for name in names:
            start = time.perf_counter()
            text, count = runs[name](1000 + index)
            rates[name].append(count / (time.perf_counter() - start))
            texts[name].append(text)
            counts[name].append(count)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    # Per token, everything besides llama_decode (Python and sampling), from the gaps
    # between one-token decodes: a median, so the machine's other load matters less.
    besides: dict[str, float] = {}
    for name, run in runs.items():
        with NativeProbe() as probe:
            run(2000)
        gaps = [gap for _, gap in probe.per_token()]
        besides[name] = statistics.median(gaps) * 1e6 if gaps else float("nan")

    return {
        "besides_decode_us": besides,
        "tokens": statistics.median(counts["ours"]),
        "tps": {name: statistics.median(values) for name, values in rates.items()},
        "ours_vs_raw": ratio("ours", "raw"),
        "ours_vs_chain": ratio("ours", "ours_chain"),
        "ours_vs_greedy": ratio("ours", "ours_greedy"),
        "same_text_fast_chain": sum(
            a == b for a, b in zip(texts["ours"], texts["ours_chain"], strict=True)
        ),
        "same_text_raw": sum(a == b for a, b in zip(texts["ours"], texts["raw"], strict=True)),
        "repeats": repeats,
    }


def _environment() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, numpy {metadata.version('numpy')}, "
        f"llama-cpp-python {metadata.version('llama-cpp-python')}",
    ]


def _report(picks: dict[str, Any], rates: dict[str, Any], command: str) -> str:
    cold, warm, batch = picks["after_decode"], picks["warm"], picks["batch"]
    tps = rates["tps"]
    bd = rates["besides_decode_us"]
    repeats = rates["repeats"]

    def row(label: str, name: str) -> str:
        def cells(figures: dict[str, Any]) -> str:
            ratio = 1.0 if name == "greedy" else figures["vs_greedy"][name]
            shown = f"**{ratio:.2f}**" if name.startswith("fast") else f"{ratio:.2f}"
            return f"{figures['us'][name]:.1f} | {shown}"

        return f"| {label} | {cells(warm)} | {cells(cold)} |"

    def batch_row(label: str, name: str) -> str:
        ratio = "1.00" if name == "argmax" else f"**{batch['vs_greedy'][name]:.2f}**"
        return f"| {label} | {batch['us'][name]:.1f} | {ratio} |"

    fast = "fast defaults"
    lines = [
        SECTION,
        "",
        f"Produced by `{command}` (Gemma 3 270M Q4_K_M, one run). Settings: the seed's "
        "defaults (temperature 0.75 with `SamplerSettings`' top-k 40, top-p 0.95, min-p "
        "0.05) and the same with top-p 0.9.",
        "",
        *_environment(),
        "",
        f"### Time per pick (µs, medians over {picks['positions']} positions of a sampled "
        "continuation)",
        "",
        f"Warm: the fastest of {BATCHES} batches of {picks['inner'] // BATCHES} picks on the "
        "same logits (the caches hold numpy's and llama.cpp's code and the logits: a pick's "
        "cost when decoding runs elsewhere, as on a GPU). After a decode: one pick right after "
        "the decode that produced the logits (median of "
        f"{BATCHES}; decoding on this CPU streams the 250 MB of weights through the caches, so "
        "every numpy call starts cold). Ratios are medians of per-position ratios. Target: "
        f"fast / greedy <= {TARGET}.",
        "",
        "| pick | warm µs | / greedy | after a decode µs | / greedy |",
        "| --- | --- | --- | --- | --- |",
        row("greedy: numpy argmax of the logits view", "greedy"),
        row("`FastSampler.choose`, the seed's defaults", "fast defaults"),
        row("`FastSampler.choose`, top-p 0.9", "fast top-p 0.9"),
        row("llama.cpp's chain (`llama_sampler_sample`), defaults", "chain"),
        "",
        f"Batched (warm, µs per row; {batch['rows']} rows of real logits from successive "
        f"positions, median over {batch['windows']} windows of the fastest of {3 * BATCHES}):",
        "",
        "| pick | µs per row | / greedy |",
        "| --- | --- | --- |",
        batch_row("greedy: numpy `argmax(axis=1)`", "argmax"),
        batch_row("`choose_batch`, the seed's defaults", "defaults"),
        batch_row("`choose_batch`, top-p 0.9", "top-p 0.9"),
        "",
        f"The fast sampler picks {warm['us']['chain'] / warm['us'][fast]:.1f}x faster than "
        f"the chain warm and {cold['us']['chain'] / cold['us'][fast]:.1f}x after a decode, "
        "but does not reach the 1.2x target. Its one pass over the 1 MiB of logits, numpy's "
        "column maxima of a 64-row view (`np.maximum.reduce(axis=0)`), alone costs about "
        "1.1-1.3x greedy's argmax here; the rest is about nine small numpy calls (1-3 µs each "
        "warm, more cold: the group maxima and their partition for the threshold, the "
        "columns that reach it, their 64 logits each, those that reach it) and one call into "
        "llama.cpp's samplers over the few dozen candidates. Batching shares the threshold "
        "calls but not the pass. What it computes is the chain's: its distribution and, for "
        "one seed, its tokens (tests/test_fast_sampling.py checks both, and `choose_batch` "
        "row by row).",
        "",
        f"### Tokens/s, {rates['tokens']:.0f} tokens from an empty KV cache "
        f"(median of {repeats} interleaved runs; temperature 0.75, top-p 0.9)",
        "",
        "| contender | tok/s | µs per token besides `llama_decode` (median) |",
        "| --- | --- | --- |",
        f"| `LlamaCPP.complete`, fast sampler | {tps['ours']:.1f} | {bd['ours']:.0f} |",
        f"| `LlamaCPP.complete`, loop sent to llama.cpp's chain | {tps['ours_chain']:.1f} "
        f"| {bd['ours_chain']:.0f} |",
        f"| raw `Llama.create_completion`, same settings and seed | {tps['raw']:.1f} "
        f"| {bd['raw']:.0f} |",
        f"| `LlamaCPP.complete`, greedy (reference) | {tps['ours_greedy']:.1f} "
        f"| {bd['ours_greedy']:.0f} |",
        "",
        f"Ratios (medians of per-run ratios): ours / raw `create_completion` "
        f"**{rates['ours_vs_raw']:.3f}**; fast / chain {rates['ours_vs_chain']:.3f}; "
        f"sampled / greedy {rates['ours_vs_greedy']:.3f}. Same text with the fast sampler and "
        f"the chain for the same seed: {rates['same_text_fast_chain']}/{repeats} runs; ours vs "
        f"`create_completion` for the same seed: {rates['same_text_raw']}/{repeats}. "
        f"A Gemma token takes about {1000 / tps['ours_greedy']:.0f} ms here, nearly all "
        "decode, so the few hundred µs a pick saves or costs are within the run-to-run noise "
        "of tokens/s on this shared 2-core machine; the per-token column (medians of the gaps "
        "between decodes, from bench/native_probe.py) shows them. On a GPU, at 1-3 ms a "
        "token, the warm figures apply.",
        "",
    ]
    return "\n".join(lines)


def _write(section: str) -> None:
    """Put ``section`` at the end of the report, replacing its earlier copy (wherever it is);
    every other section stays as it is."""
    existing = REPORT.read_text() if REPORT.exists() else ""
    head, found, rest = existing.partition("\n" + SECTION + "\n")
    if found:
        after = rest.find("\n## ")
        existing = head.rstrip() + ("\n\n" + rest[after + 1 :] if after >= 0 else "")
    REPORT.write_text(existing.rstrip() + "\n\n" + section.rstrip() + "\n")
    print(f"wrote {REPORT}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--positions", type=int, default=24)
    parser.add_argument("--inner", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=8)
    parser.add_argument("--picks-only", action="store_true", help="skip the tokens/s part")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        llm = LlamaCPP(model_path=str(_wide_tiny_model()), formatter="llama2", temperature=0.75)
        picks = bench_picks(llm, positions=2, inner=10, batch_rows=2)
        print(picks)
        print(bench_tokens_per_second(llm, tokens=8, repeats=2, formatter="llama2"))
        return 0
    llm = LlamaCPP(model_path=str(demo_model_path()), formatter=FORMATTER, context_window=2048)
    print("[sampling] picks", file=sys.stderr)
    picks = bench_picks(llm, args.positions, args.inner, args.batch_rows)
    print(picks, file=sys.stderr)
    if args.picks_only:
        return 0
    print("[sampling] tokens/s", file=sys.stderr)
    rates = bench_tokens_per_second(llm, args.tokens, args.repeats)
    print(rates, file=sys.stderr)
    command = ".venv/bin/python bench/bench_sampling.py --write"
    section = _report(picks, rates, command)
    print(section)
    if args.write:
        _write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
