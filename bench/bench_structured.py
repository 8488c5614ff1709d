"""Structured output: what constraining costs, and how often answers are valid without it.

    .venv/bin/python bench/bench_structured.py --write    # appends to docs/benchmarks.md
    .venv/bin/python bench/bench_structured.py --smoke    # CI: tiny model, a few tokens

1. Cost: on Gemma 3 270M, one prompt, greedy. The constrained run produces N tokens of JSON;
   the unconstrained run generates exactly N tokens from the same prompt (end-of-generation
   tokens banned natively, so it cannot stop early). Each run reuses the cached prompt, so
   the time is generation. Ratio = constrained / unconstrained time, medians of pairs run
   back to back in alternating order. llama.cpp's own grammar sampler on the same task
   (``LlamaGrammar.from_json_schema`` through ``create_completion``) and the same GBNF grammar
   through our loop (applied by llguidance since issue 10, like ``json_schema=``)
   runs in the same pairs. The one-time per-model set-up is timed on its own.
2. Validity: 20 extraction prompts through ``TextCompletionLLM`` with and without constraints.
"""

from __future__ import annotations

import argparse
import enum
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import attrs
from pydantic import BaseModel, Field

from serapeum.core.llms import TextCompletionLLM
from serapeum.core.output_parsers import OutputParserError
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.structured import IncompleteJSONError, JsonConstraints
from serapeum.llama_cpp.demo import demo_model_path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Structured output"

TASK_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
TASK_PROMPT = (
    "Extract the person as JSON with name, age and city.\n"
    "Text: Maria Lopez, 34, moved to Madrid last year.\nJSON:"
)


class Role(enum.Enum):
    ENGINEER = "engineer"
    DESIGNER = "designer"
    MANAGER = "manager"


class Person(BaseModel):
    name: str
    age: int


class Address(BaseModel):
    street: str
    city: str
    country: str


class Employee(BaseModel):
    name: str
    role: Role


class ShoppingList(BaseModel):
    items: list[str] = Field(max_length=8)


class Order(BaseModel):
    customer: Person
    shipping: Address


@attrs.define
class Book:
    title: str
    author: str
    year: int


@attrs.define
class LibraryUnbounded:
    books: list[Book]


@attrs.define
class WeatherUnbounded:
    city: str
    condition: Literal["sunny", "cloudy", "rainy", "snowy"]
    temperature: float


# Gemma 3 270M, greedy, degenerates on these two as written: it repeats list items, and it
# writes "27.000000..." until max_new_tokens; a bound in the schema is what stops it.
@attrs.define
class Library:
    books: list[Book] = attrs.field(metadata={"json_schema": {"maxItems": 5}})


@attrs.define
class Weather:
    city: str
    condition: Literal["sunny", "cloudy", "rainy", "snowy"]
    temperature: float = attrs.field(metadata={"json_schema": {"multipleOf": 0.1}})


EXTRACTIONS: list[tuple[type, str]] = [
    (Person, "Alice Johnson is 29 years old."),
    (Person, "The patient, Tom Becker, aged 61, was admitted on Monday."),
    (Person, "Meet Priya, a 45-year-old architect."),
    (Address, "Ship it to 12 Rue de Rivoli, Paris, France."),
    (Address, "Our office: 221B Baker Street, London, United Kingdom."),
    (Address, "She lives at Calle Mayor 5 in Madrid, Spain."),
    (Employee, "Sam Lee works as an engineer on the platform team."),
    (Employee, "Our new manager is Dana Kim."),
    (Employee, "Luis Ortega designs our interfaces; he is a designer."),
    (ShoppingList, "Buy milk, eggs, bread and two apples."),
    (ShoppingList, "We need tomatoes, basil, mozzarella and olive oil for dinner."),
    (ShoppingList, "Pick up batteries and a light bulb."),
    (Order, "Order from Ken Adams (52) to 9 Elm Road, Boston, USA."),
    (Order, "Customer Mia Rossi, 31, ship to Via Roma 3, Milan, Italy."),
    (Book, "'Dune' was written by Frank Herbert in 1965."),
    (Book, "George Orwell published Nineteen Eighty-Four in 1949."),
    (Library, "The shelf holds Emma by Jane Austen (1815) and Ulysses by James Joyce (1922)."),
    (Library, "We own 'The Hobbit' (Tolkien, 1937)."),
    (Weather, "Oslo today: snowy, minus 3 degrees."),
    (Weather, "Sunny in Rome with 27 degrees."),
]


UNBOUNDED = {Library: LibraryUnbounded, Weather: WeatherUnbounded}


def _validity(
    llm: LlamaCPP, constrained: bool, cases: list[tuple[type, str]] = EXTRACTIONS
) -> tuple[int, list[str]]:
    valid, failures = 0, []
    for output_cls, text in cases:
        extract: TextCompletionLLM[Any] = TextCompletionLLM(
            prompt="Extract the data from this text.\nText: {text}",
            output_cls=output_cls,
            llm=llm,
            constrained=constrained,
        )
        try:
            result = extract(text=text, llm_kwargs={"max_new_tokens": 160})
        except (OutputParserError, IncompleteJSONError) as error:
            failures.append(f"{output_cls.__name__}: {type(error).__name__}")
            continue
        valid += isinstance(result, output_cls)
    return valid, failures


def _cost(llm: LlamaCPP, repeats: int) -> dict[str, Any]:
    from llama_cpp import LlamaGrammar

    llama = llm.loaded_model.llama  # type: ignore[attr-defined]
    model = llm.loaded_model
    eog = [
        t
        for t in range(model.n_vocab)
        if __import__("llama_cpp").llama_vocab_is_eog(model.vocab, t)
    ]  # type: ignore[attr-defined]
    no_end = {token: float("-inf") for token in eog}
    grammar = LlamaGrammar.from_json_schema(json.dumps(TASK_SCHEMA), verbose=False)
    first = llm.complete(TASK_PROMPT, formatted=True, json_schema=TASK_SCHEMA)
    assert first.usage is not None
    n = first.usage.completion_tokens
    prompt_tokens = llm.tokenize(TASK_PROMPT)

    def constrained() -> str:
        return llm.complete(TASK_PROMPT, formatted=True, json_schema=TASK_SCHEMA).text

    # The unconstrained run must generate exactly n tokens. Banning the end-of-generation
    # tokens (logit_bias) would also move it off our greedy argmax onto llama.cpp's sampler
    # (~650 µs a token here), so it is used only if the model would stop early.
    probe = llm.complete(TASK_PROMPT, formatted=True, max_new_tokens=n)
    assert probe.usage is not None
    free_options: dict[str, Any] = (
        {} if probe.usage.completion_tokens == n else {"logit_bias": no_end}
    )

    def free() -> str:
        response = llm.complete(TASK_PROMPT, formatted=True, max_new_tokens=n, **free_options)
        assert response.usage is not None and response.usage.completion_tokens == n
        return response.text

    def llama_grammar_ours() -> str:
        return llm.complete(TASK_PROMPT, formatted=True, grammar=grammar, max_new_tokens=n + 8).text

    def llama_grammar_raw() -> str:
        result = llama.create_completion(
            prompt_tokens, grammar=grammar, max_tokens=n + 8, temperature=0.0
        )
        return str(result["choices"][0]["text"])

    runs = {
        "constrained": constrained,
        "free": free,
        "grammar_ours": llama_grammar_ours,
        "grammar_raw": llama_grammar_raw,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, str] = {}
    names = list(runs)
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            texts[name] = runs[name]()
            times[name].append(time.perf_counter() - start)

    def ratio(name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times["free"], strict=True))

    return {
        "tokens": n,
        "text": texts["constrained"],
        "grammar_text": texts["grammar_ours"],
        "ms": {name: statistics.median(values) * 1e3 for name, values in times.items()},
        "ratio": {name: ratio(name) for name in runs},
        "free_banned_end": bool(free_options),
    }


def _setup_seconds(llm: LlamaCPP) -> float:
    model = llm.loaded_model
    fresh = JsonConstraints(model.vocab, model.n_vocab)  # type: ignore[attr-defined]
    start = time.perf_counter()
    fresh.check(TASK_SCHEMA)
    return time.perf_counter() - start


def _compile_ms(llm: LlamaCPP) -> float:
    constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
    schema = dict(TASK_SCHEMA, title="fresh")  # not cached yet
    start = time.perf_counter()
    constraints.check(schema)
    return (time.perf_counter() - start) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        from serapeum.llama_cpp.testing import build_tiny_gguf

        path = build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf")
        llm = LlamaCPP(model_path=str(path), formatter="llama2", temperature=0.0, max_new_tokens=64)
        bounded = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        print(json.loads(llm.complete("x", json_schema=bounded).text))
        return 0
    llm = LlamaCPP(
        model_path=str(demo_model_path()), formatter="gemma", temperature=0.0, context_window=2048
    )
    setup = _setup_seconds(llm)
    llm.complete(TASK_PROMPT, formatted=True, json_schema=TASK_SCHEMA)  # set-up paid here
    compile_ms = _compile_ms(llm)
    print("[structured] cost", file=sys.stderr)
    cost = _cost(llm, args.repeats)
    print(json.dumps(cost), file=sys.stderr)
    print("[structured] validity", file=sys.stderr)
    with_constraints = _validity(llm, True)
    without = _validity(llm, False)
    unbounded_cases = [(UNBOUNDED[cls], text) for cls, text in EXTRACTIONS if cls in UNBOUNDED]
    unbounded = _validity(llm, True, unbounded_cases)
    lines = [
        SECTION,
        "",
        f"Produced by `.venv/bin/python bench/bench_structured.py --write` (Gemma 3 270M Q4_K_M, "
        f"greedy, {args.repeats} interleaved repeats, medians of per-pair ratios).",
        "",
        f"Task: extract a person (3 fields) as JSON; the constrained answer is {cost['tokens']} tokens: "
        f"`{cost['text']}`. Every contender generates on a cached prompt.",
        "",
        "| contender | time | / unconstrained | target |",
        "| --- | --- | --- | --- |",
        f"| unconstrained, exactly {cost['tokens']} tokens"
        f"{' (end of generation banned)' if cost['free_banned_end'] else ''} "
        f"| {cost['ms']['free']:.0f} ms | 1.000 | |",
        f"| **constrained (`json_schema=`, llguidance, check first)** | {cost['ms']['constrained']:.0f} ms "
        f"| **{cost['ratio']['constrained']:.3f}** | <= 1.15 |",
        f"| `grammar=LlamaGrammar.from_json_schema(...)` through our loop (llguidance since issue 10) | {cost['ms']['grammar_ours']:.0f} ms "
        f"| {cost['ratio']['grammar_ours']:.3f} | |",
        f"| `LlamaGrammar.from_json_schema` through `create_completion` | {cost['ms']['grammar_raw']:.0f} ms "
        f"| {cost['ratio']['grammar_raw']:.3f} | |",
        "",
        f"One-time set-up per loaded model (llguidance's view of the 262,144-token vocabulary): "
        f"**{setup:.2f} s**, paid by the first constrained request and kept with the model; "
        f"compiling a new schema afterwards: {compile_ms:.1f} ms, once per schema (cached).",
        "",
        f"Validity over {len(EXTRACTIONS)} extraction prompts through `TextCompletionLLM` "
        "(people, addresses, enums, lists, nested objects; pydantic and attrs classes):",
        "",
        "| | valid instances |",
        "| --- | --- |",
        f"| constrained | **{with_constraints[0]}/{len(EXTRACTIONS)}** |",
        f"| only asked nicely (format instructions) | {without[0]}/{len(EXTRACTIONS)} |",
        "",
        f"The bounds matter: `Library` and `Weather` carry `maxItems`/`multipleOf` through "
        f"`attrs.field(metadata={{'json_schema': ...}})`; without them, constrained, "
        f"{unbounded[0]}/{len(unbounded_cases)} of their prompts give a valid instance (the model "
        "repeats list items, or writes `27.000000...`, until `max_new_tokens` and "
        "`IncompleteJSONError` says so). Constraining guarantees the shape, not that a small model "
        "knows when to stop.",
        "",
    ]
    if with_constraints[1]:
        lines += ["Constrained failures: " + "; ".join(with_constraints[1]), ""]
    section = "\n".join(lines)
    print(section)
    if args.write:
        existing = REPORT.read_text() if REPORT.exists() else ""
        head, _, rest = existing.partition(SECTION)
        head = head.rstrip() + "\n\n" if head.strip() else ""
        # Keep the sections that follow this one (the next "## " heading onwards).
        after = rest.find("\n## ")
        tail = "\n" + rest[after + 1 :] if rest and after >= 0 else ""
        REPORT.write_text(head + section + tail)
        print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
