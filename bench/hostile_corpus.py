"""Throw a corpus of bad inputs at the public API and count aborts, hangs and untyped errors.

Each case runs in a child process that reports when it starts and how it ended, so an abort
kills one case (the child is restarted for the rest) and a hang is caught by a watchdog.
Outcomes: ``ok`` (accepted), ``typed`` (a SerapeumError), ``untyped`` (any other exception),
``abort`` (the child died), ``hang`` (no answer within the watchdog). The acceptance bar is
0 aborts, 0 hangs, 0 untyped, every case answered within 5 s.

    python bench/hostile_corpus.py            # the full corpus
    python bench/hostile_corpus.py --smoke    # a sample, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

WATCHDOG_SECONDS = 30.0

# The child: reads JSON cases on stdin, one per line; answers one JSON line per case.
CHILD = r"""
import json, sys, time, traceback
from serapeum.core.errors import SerapeumError

def run(case, cache={}):
    kind = case["kind"]
    if kind == "file":
        from serapeum.llama_cpp import LlamaCPP
        llm = LlamaCPP(model_path=case["path"], formatter="llama2", max_new_tokens=2)
        llm.complete("hi")
    elif kind == "template":
        from serapeum.core.llms import Message
        from serapeum.llama_cpp.chat_template import render_chat_template
        render_chat_template(case["template"], [Message.user("hi"), Message.assistant("yo"), Message.user("x")])
    elif kind == "option":
        from serapeum.llama_cpp import LlamaCPP
        if "llm" not in cache:
            cache["llm"] = LlamaCPP(model_path=case["model"], formatter="llama2", max_new_tokens=2)
        value = eval(case["value"])
        cache["llm"].complete("hi", **{case["name"]: value})
    elif kind == "load_option":
        from serapeum.llama_cpp import LlamaCPP
        LlamaCPP(model_path=case["model"], formatter="llama2", model_kwargs={case["name"]: eval(case["value"])})
    elif kind == "call":
        from serapeum.llama_cpp import LlamaCPP
        if "llm" not in cache:
            cache["llm"] = LlamaCPP(model_path=case["model"], formatter="llama2", max_new_tokens=2)
        exec(case["code"], {"llm": cache["llm"]})

for line in sys.stdin:
    case = json.loads(line)
    print(json.dumps({"start": case["id"]}), flush=True)
    started = time.perf_counter()
    try:
        run(case)
        outcome, detail = "ok", ""
    except SerapeumError as exc:
        outcome, detail = "typed", type(exc).__name__
    except BaseException as exc:
        outcome, detail = "untyped", f"{type(exc).__name__}: {str(exc)[:120]}"
    print(json.dumps({"end": case["id"], "outcome": outcome, "detail": detail,
                      "seconds": time.perf_counter() - started}), flush=True)
"""


def _mutated_files(tiny: Path, folder: Path, smoke: bool) -> list[dict[str, str]]:
    import gguf

    cases = []
    data = tiny.read_bytes()
    reader = gguf.GGUFReader(str(tiny))
    header_end = int(reader.data_offset)
    step = 97 if smoke else 11
    for offset in range(0, header_end, step):
        for value in (0xFF, 0x00, 0x7F):
            if data[offset] == value:
                continue
            path = folder / f"byte-{offset}-{value:02x}.gguf"
            path.write_bytes(data[:offset] + bytes([value]) + data[offset + 1 :])
            cases.append({"kind": "file", "id": path.stem, "path": str(path)})
    for length in range(0, len(data), max(1, len(data) // (8 if smoke else 64))):
        path = folder / f"truncated-{length}.gguf"
        path.write_bytes(data[:length])
        cases.append({"kind": "file", "id": path.stem, "path": str(path)})
    for count in (0, 1, 3, 513, 1000, 2**31 - 1):
        path = folder / f"block-count-{count}.gguf"
        shutil.copyfile(tiny, path)
        edit = gguf.GGUFReader(str(path), "r+")
        field = edit.fields["llama.block_count"]
        field.parts[field.data[0]][0] = count
        del edit
        cases.append({"kind": "file", "id": path.stem, "path": str(path)})
    return cases


TEMPLATES = {
    "nested-loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "string-loops": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(1000000) }}",
    "slice": "{{ range(10)|slice(100000000) }}",
    "center": "{{ 'a'|center(1000000000) }}",
    "format-width": "{{ '%01000000000d'|format(1) }}",
    "format-precision": "{{ '%.1000000000f'|format(1.0) }}",
    "str-format": "{{ '{:>1000000000}'.format(1) }}",
    "mod-star": "{{ '%*d' % (1000000000, 1) }}",
    "tilde-doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "join": "{{ ([('x' * 1000000)] * 1000)|join }}",
    "replace": "{{ ('x' * 1000000)|replace('x', 'yyyyyyyyyy') }}",
    "tojson-indent": "{{ range(1000)|list|tojson(indent=1000000) }}",
    "indent": "{{ ('a\n' * 100000)|indent(100000) }}",
    "batch": "{{ range(10)|batch(1000000000, 'x')|list }}",
    "div-zero": "{{ 1/0 }}",
    "floordiv-zero": "{{ 1//0 }}",
    "mod-zero": "{{ 1%0 }}",
    "overflow": "{{ (1e308*10)|int }}",
    "deep-parens": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "deep-ifs": "{% if true %}" * 3000 + "{% endif %}" * 3000,
    "macro-recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "accumulate": "{% set ns = namespace(l=[]) %}{% set big = 'x' * 1000000 %}{% for i in range(100000) %}{% set ns.l = ns.l + [big ~ i] %}{% endfor %}",
    "two-messages-only": "{% if messages|length > 1 %}{{ 1/0 }}{% endif %}ok",
    "syntax": "{% if %}",
    "python-escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}

OPTIONS = {
    "top_k": ["-5", "10**12", "'x'"],
    "top_p": ["float('nan')", "2.0", "-1"],
    "min_p": ["5", "float('inf')"],
    "typical_p": ["-1"],
    "repeat_penalty": ["float('nan')", "-1", "0"],
    "frequency_penalty": ["float('inf')"],
    "presence_penalty": ["float('-inf')"],
    "mirostat_mode": ["7"],
    "mirostat_tau": ["float('nan')"],
    "logit_bias": ["{10**9: 1.0}", "{-1: 1.0}", "{1: float('nan')}", "[1, 2]"],
    "seed": ["2**64", "-1", "'x'"],
    "logprobs": ["10**6", "-1"],
    "grammar": ["'root ::= \"a\"'", "42"],
    "logits_processor": ["1"],
    "stopping_criteria": ["'x'"],
    "stop": ["123", "[1, 2]"],
    "temperature": ["float('nan')", "-1", "'hot'"],
    "max_new_tokens": ["0", "-1", "1.5"],
    "json_schema": [
        "{'$ref': '#'}",
        "{'type': 'object', 'properties': {'a': {'$ref': '#'}}, 'required': ['a']}",
        "'{'",
        "nested(2000)",
    ],
}
LOAD_OPTIONS = {
    "type_k": ["999", "-1"],
    "type_v": ["999"],
    "n_threads": ["-5"],
    "n_batch": ["0", "-1"],
    "no_such_option": ["1"],
    "n_ctx": ["-1"],
    "rope_freq_base": ["float('nan')"],
}
CALLS = {
    "lone-surrogate": "llm.complete('\\ud800')",
    "chat-strings": "llm.chat(['hello'])",
    "chat-none": "llm.chat(None)",
    "system-prompt-int": "type(llm)(model_path=llm.model_path, formatter='llama2', system_prompt=123)",
    "prompt-bytes": "llm.complete(b'hi')",
}


def _cases(tiny: Path, folder: Path, smoke: bool) -> list[dict[str, str]]:
    cases = _mutated_files(tiny, folder, smoke)
    cases += [
        {"kind": "template", "id": f"template-{k}", "template": v} for k, v in TEMPLATES.items()
    ]
    nested = "(lambda d: [d := {'type': 'array', 'items': d} for _ in range(2000)][-1])({'type': 'string'})"
    for name, values in OPTIONS.items():
        for value in values:
            value = nested if value == "nested(2000)" else value
            cases.append(
                {
                    "kind": "option",
                    "id": f"option-{name}={value[:30]}",
                    "name": name,
                    "value": value,
                    "model": str(tiny),
                }
            )
    for name, values in LOAD_OPTIONS.items():
        for value in values:
            cases.append(
                {
                    "kind": "load_option",
                    "id": f"load-{name}={value}",
                    "name": name,
                    "value": value,
                    "model": str(tiny),
                }
            )
    cases += [
        {"kind": "call", "id": f"call-{k}", "code": v, "model": str(tiny)} for k, v in CALLS.items()
    ]
    fifo = folder / "fifo.gguf"
    os.mkfifo(fifo)
    loop = folder / "loop.gguf"
    os.symlink(loop, loop)
    for path in (fifo, loop, Path("/dev/zero"), folder):
        cases.append({"kind": "file", "id": f"path-{path.name or path}", "path": str(path)})
    return cases


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    """Hand the child's lines to the watchdog loop; an empty string means it ended."""
    for line in stream:
        lines.put(line)
    lines.put("")


def _run(cases: list[dict[str, str]], env: dict[str, str]) -> dict[str, dict[str, object]]:
    """Run the cases in as few children as possible; an abort or a hang ends one case."""
    results: dict[str, dict[str, object]] = {}
    pending = list(cases)
    while pending:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert child.stdin is not None and child.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
        try:
            for case in pending:
                child.stdin.write(json.dumps(case) + "\n")
                child.stdin.flush()
                started = time.monotonic()
                try:
                    line = lines.get(timeout=WATCHDOG_SECONDS)  # {"start": ...}
                    if line:
                        line = lines.get(timeout=WATCHDOG_SECONDS)
                except queue.Empty:
                    results[case["id"]] = {"outcome": "hang", "seconds": time.monotonic() - started}
                    break
                if not line:
                    results[case["id"]] = {"outcome": "abort", "detail": f"exit {child.wait()}"}
                    break
                results[case["id"]] = json.loads(line)
        finally:
            child.kill()
            child.wait()
        pending = [c for c in pending if c["id"] not in results]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from serapeum.llama_cpp.testing import build_tiny_gguf

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        tiny = build_tiny_gguf(folder / "tiny.gguf")
        env = {**os.environ, "SERAPEUM_CACHE_DIR": str(folder / "cache")}
        cases = _cases(tiny, folder, args.smoke)
        started = time.perf_counter()
        results = _run(cases, env)
        elapsed = time.perf_counter() - started
    table: dict[str, Counter[str]] = defaultdict(Counter)
    slowest: dict[str, float] = defaultdict(float)
    bad = []
    for case in cases:
        category = case["kind"]
        report = results[case["id"]]
        outcome = str(report["outcome"])
        table[category][outcome] += 1
        slowest[category] = max(slowest[category], float(report.get("seconds", 0.0)))  # type: ignore[arg-type]
        if outcome in ("abort", "hang", "untyped", "lost") or float(report.get("seconds", 0)) > 5:  # type: ignore[arg-type]
            bad.append((case["id"], report))
    print(f"{len(cases)} cases in {elapsed:.0f} s\n")
    print(
        "| inputs | cases | accepted | typed error | untyped | abort | hang | slowest answer (s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for category, counts in table.items():
        print(
            f"| {category} | {sum(counts.values())} | {counts['ok']} | {counts['typed']} | "
            f"{counts['untyped']} | {counts['abort']} | {counts['hang']} | {slowest[category]:.2f} |"
        )
    for case_id, report in bad:
        print(f"FAILED {case_id}: {report}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
