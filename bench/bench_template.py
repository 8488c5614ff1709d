"""What the chat-template bounds cost: one ``chat()``-sized render, bounded vs plain Jinja.

    .venv/bin/python bench/bench_template.py            # a few thousand renders per template
    .venv/bin/python bench/bench_template.py --smoke    # CI: a few renders, checks they agree

Each real template (tests/data/chat-templates.json) renders a 10-turn conversation
(a system message, ten user/assistant pairs, a last question; about 3,000 characters)
three ways, from an already compiled template:

* plain ``jinja2.Environment``, no sandbox at all;
* ``jinja2.sandbox.ImmutableSandboxedEnvironment``, as Hugging Face renders templates;
* ``render_chat_template``, the bounded sandbox (checkpoints, size checks, a budget).

Every path converts the ``Message`` list to dicts, as a render must. Times are the median
of seven interleaved runs of N renders, in microseconds per render. The last columns show how much of
its budget the bounded render used (steps, characters created) against the limits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from serapeum.core.llms import Message
from serapeum.llama_cpp import chat_template

TEMPLATES = Path(__file__).resolve().parent.parent / "tests" / "data" / "chat-templates.json"
FAMILIES = (
    "llama-2-chat",
    "llama-3.1-instruct",
    "mistral-7b-instruct-v0.3",
    "gemma-3-it",
    "qwen2.5-instruct",
    "qwen3",
    "deepseek-r1-distill-qwen",
    "phi-4",
    "granite-3.x-instruct",
)


def conversation() -> list[Message]:
    turns = [Message.system("You are a careful assistant. Answer briefly and cite sources.")]
    for index in range(10):
        turns.append(Message.user(f"Question {index}: how do I read a GGUF header in Python? " * 2))
        turns.append(
            Message.assistant(f"<think>step {index}</think>Use the gguf package's reader. " * 2)
        )
    turns.append(Message.user("Thanks. And the tensor data offsets?"))
    return turns


def _raise(message: str) -> None:
    raise ValueError(message)


def plain_renderer(env: jinja2.Environment, entry: dict[str, Any]) -> Callable[..., str]:
    env.globals.update(
        raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt)
    )
    template = env.from_string(entry["chat_template"])

    def render(messages: Sequence[Message]) -> str:
        return template.render(
            messages=[{"role": m.role.value, "content": m.content} for m in messages],
            bos_token=entry["bos_token"] or "",
            eos_token=entry["eos_token"] or "",
            add_generation_prompt=True,
        )

    return render


def bounded_renderer(entry: dict[str, Any]) -> Callable[..., str]:
    def render(messages: Sequence[Message]) -> str:
        return chat_template.render_chat_template(
            entry["chat_template"],
            messages,
            bos_token=entry["bos_token"] or "",
            eos_token=entry["eos_token"] or "",
        )

    return render


def per_render_us(
    renderers: Sequence[Callable[..., str]], messages: list[Message], n: int, runs: int
) -> list[float]:
    """Median µs per render of each renderer, their runs interleaved (the machine's load
    drifts; interleaving keeps the ratios fair)."""
    for render in renderers:
        render(messages)  # compile caches, warm-up
    samples: list[list[float]] = [[] for _ in renderers]
    for _ in range(runs):
        for index, render in enumerate(renderers):
            start = time.perf_counter()
            for _ in range(n):
                render(messages)
            samples[index].append((time.perf_counter() - start) / n * 1e6)
    return [statistics.median(times) for times in samples]


def budget_used(render: Callable[..., str], messages: list[Message]) -> Any:
    """The bounded render's budget after one render (steps, characters created, limits)."""
    seen: list[Any] = []
    original = chat_template.Budget

    class Recorded(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            seen.append(self)

    chat_template.Budget = Recorded  # type: ignore[misc]
    try:
        render(messages)
    finally:
        chat_template.Budget = original  # type: ignore[misc]
    return seen[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few renders per template")
    parser.add_argument("-n", type=int, default=2000, help="renders per run")
    args = parser.parse_args(argv)
    n, runs = (20, 2) if args.smoke else (args.n, 7)

    entries = {e["family"]: e for e in json.loads(TEMPLATES.read_text())}
    messages = conversation()
    size = sum(len(m.content) for m in messages)
    print(f"{len(messages)} messages, {size:,} characters; {n} renders x {runs} runs, median\n")
    print(
        "| template | prompt chars | Environment µs | sandbox µs | bounded µs | bounded / sandbox "
        "| bounded / Environment | steps | chars created |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for family in FAMILIES:
        entry = entries[family]
        options = {
            "trim_blocks": True,
            "lstrip_blocks": True,
            "extensions": ["jinja2.ext.loopcontrols"],
        }
        plain = plain_renderer(jinja2.Environment(**options), entry)
        sandbox = plain_renderer(ImmutableSandboxedEnvironment(**options), entry)
        bounded = bounded_renderer(entry)
        prompt = bounded(messages)
        if prompt != sandbox(messages) and "strftime_now" not in entry["chat_template"]:
            print(f"{family}: the bounded render differs from the sandbox's", file=sys.stderr)
            return 1
        times = per_render_us((plain, sandbox, bounded), messages, n, runs)
        used = budget_used(bounded, messages)
        ratios.append(times[2] / times[1])
        print(
            f"| {family} | {len(prompt):,} | {times[0]:.0f} | {times[1]:.0f} | {times[2]:.0f} "
            f"| {times[2] / times[1]:.2f} | {times[2] / times[0]:.2f} "
            f"| {used.steps:,} / {used.limits.steps:,} "
            f"| {used.allocated:,} / {used.limits.allocated_chars:,} |"
        )
    print(f"\nbounded / sandbox, median over templates: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
