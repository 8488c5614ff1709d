"""Regressions from an attacker's review of the engine side of issue 10.

Each test failed before its fix: an untyped error (``OverflowError``, ``ValueError`` from
printing a 5,000-digit integer), a process killed by llama.cpp or llguidance (SIGSEGV,
SIGABRT), a render or a tokenization that ran for minutes, or a value refused that the
same number as a Python ``int``/``float`` was accepted with. Whatever can crash or hang
runs in a child process, so a regression fails one test, not the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serapeum.core.errors import ArgumentTypeError, ConfigurationError, SerapeumError
from serapeum.core.llms import Message
from serapeum.core.llms.mixins import check_messages
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.structured import (
    MAX_GRAMMAR_BYTES,
    MAX_GRAMMAR_RULES,
    _admits_finite_value,
    schema_from_options,
)
from serapeum.llama_cpp.chat_template import ChatTemplateError, render_chat_template
from serapeum.llama_cpp.errors import ContextWindowExceededError, SchemaError
from serapeum.llama_cpp.llm import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from serapeum.llama_cpp.load_options import check_load_options
from serapeum.llama_cpp.template_sandbox.limits import Limits

HUGE = 10**5000  # repr() of it raises ValueError (Python's 4,300-digit limit)
CHILD_TIMEOUT = 180  # a hang detector on a shared machine, not a speed limit


def _child(code: str, *args: Any) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line as its last output."""
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        check=False,
    )
    assert result.returncode == 0, f"the child died ({result.returncode}): {result.stderr[-500:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# The child's prelude: OUTCOME(call) prints what happened as JSON.
PRELUDE = """
import json, sys
from serapeum.core.errors import SerapeumError
from serapeum.llama_cpp import LlamaCPP

def OUTCOME(call):
    try:
        value = call()
        print(json.dumps({"outcome": "ok", "value": str(value)[:200]}))
    except SerapeumError as exc:
        print(json.dumps({"outcome": type(exc).__name__, "message": str(exc)[:300]}))

def LLM(**kwargs):
    return LlamaCPP(model_path=sys.argv[1], formatter="llama2", temperature=0.0,
                    max_new_tokens=4, **kwargs)
"""


# --- options: numbers too large for a float, or for repr ----------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"top_p": 10**400},  # OverflowError: int too large to convert to float
        {"tfs_z": 10**400},
        {"logit_bias": {1: 10**400}},
        {"top_k": HUGE},  # ValueError from the error message's repr
        {"seed": HUGE},
        {"temperature": HUGE},
        {"logit_bias": {"9" * 5000: 1.0}},  # int() of 5,000 digits
        {"logit_bias": ((1, 2, 3),)},  # dict() of a 3-tuple
        {"stop": HUGE},
        {"cancel": HUGE},
    ],
    ids=lambda options: next(iter(options)),
)
def test_huge_numbers_in_options_are_configuration_errors(
    tiny_llm: LlamaCPP, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        tiny_llm.complete("hi", **options)


@pytest.mark.parametrize(
    "stop",
    [[f"zq{i}" for i in range(MAX_STOP_SEQUENCES + 1)], "z" * (MAX_STOP_CHARS + 1)],
    ids=["count", "length"],
)
def test_stop_sequences_are_bounded(tiny_llm: LlamaCPP, stop: Any) -> None:
    # each token compared every stop sequence with the held-back text: 10,000 of them
    # made every token 50 ms slower
    with pytest.raises(ConfigurationError, match="stop"):
        tiny_llm.complete("hi", stop=stop)
    assert tiny_llm.complete("hi", stop=stop[:MAX_STOP_SEQUENCES]).text is not None


def test_numpy_scalars_work_like_python_numbers(tiny_llm: LlamaCPP) -> None:
    """numpy numbers (from an array, a sweep) were refused where the same int/float passed."""
    plain = tiny_llm.complete(
        "hi", top_k=5, top_p=0.5, seed=3, logit_bias={5: -1.0}, temperature=0.0, max_tokens=3
    )
    with_numpy = tiny_llm.complete(
        "hi",
        top_k=np.int64(5),
        top_p=np.float32(0.5),
        seed=np.uint32(3),
        logit_bias={np.int64(5): np.float32(-1.0)},
        temperature=np.float32(0.0),
        max_tokens=np.int64(3),
        logprobs=np.int64(2),
    )
    assert with_numpy.text == plain.text


def test_refusing_a_huge_integer_is_not_an_error_of_its_own() -> None:
    with pytest.raises(ArgumentTypeError, match="bits"):
        check_messages(HUGE)
    with pytest.raises(ArgumentTypeError):
        check_messages([Message.user("hi"), HUGE])


def test_n_gpu_layers_beyond_a_c_int_is_refused(tmp_path: Path) -> None:
    # 2**32 - 5 reached llama.cpp as -5 (ctypes wraps around silently)
    with pytest.raises(ConfigurationError, match="n_gpu_layers"):
        LlamaCPP(model_path=str(tmp_path / "any.gguf"), n_gpu_layers=2**32 - 5)


# --- load options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"rope_freq_base": 10**400},  # OverflowError
        {"tensor_split": [10**400]},
        {"n_ctx": HUGE},  # ValueError from the message's repr
        {"rope_freq_base": 1e300},  # a C float: it became infinity
        {"lora_scale": -1e300},
        {"kv_overrides": {"llama.rope.scaling.type": "bogus"}},  # SIGABRT in llama.cpp
        {"kv_overrides": {"llama.rope.scaling.type": "NONE"}},
    ],
    ids=lambda options: next(iter(options)),
)
def test_bad_load_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        check_load_options(options)


def test_numpy_integers_are_accepted_as_load_options() -> None:
    checked = check_load_options({"n_ctx": np.int64(256), "n_batch": np.int32(64)})
    assert checked == {"n_ctx": 256, "n_batch": 64}
    assert all(type(value) is int for value in checked.values())


def test_a_bad_rope_scaling_override_does_not_abort_the_process(tiny_model_path: Path) -> None:
    code = PRELUDE + (
        "OUTCOME(lambda: LLM(model_kwargs={'kv_overrides': "
        "{'llama.rope.scaling.type': 'bogus'}}).complete('hi').text)"
    )
    assert _child(code, tiny_model_path)["outcome"] == "ConfigurationError"


def test_an_n_batch_past_the_context_loads(tiny_model_path: Path) -> None:
    # llama-cpp-python sized an n_batch x vocabulary array from it: MemoryError
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=3,
        model_kwargs={"n_batch": 2**31 - 1},
    )
    assert llm.complete("hi").usage is not None


# --- LoRA adapters: llama-cpp-python dereferences a NULL adapter (SIGSEGV) ----------------


def _write_lora(model: Path, target: Path) -> Path:
    """A real rank-4 LoRA adapter for the tiny model's attention queries."""
    import gguf

    shapes = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(model).tensors}
    writer = gguf.GGUFWriter(target, "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    for name, shape in shapes.items():
        if name.endswith("attn_q.weight"):
            n_in, n_out = shape
            writer.add_tensor(name + ".lora_a", np.full((4, n_in), 0.01, dtype=np.float32))
            writer.add_tensor(name + ".lora_b", np.full((n_out, 4), 0.01, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.mark.parametrize(
    ("adapter", "outcome"),
    [
        ("missing", "ModelFileError"),
        ("fifo", "ModelFileError"),  # opening it blocked forever
        ("not an adapter", "ModelLoadError"),  # the model file itself
        ("not gguf", "NotGGUFError"),
        ("adapter", "ok"),
    ],
)
def test_a_lora_adapter_that_cannot_load_is_an_error_not_a_crash(
    tiny_model_path: Path, tmp_path: Path, adapter: str, outcome: str
) -> None:
    paths = {
        "missing": tmp_path / "missing.gguf",
        "fifo": tmp_path / "fifo",
        "not an adapter": tiny_model_path,
        "not gguf": tmp_path / "random.bin",
    }
    if adapter == "fifo":
        os.mkfifo(paths["fifo"])
    paths["not gguf"].write_bytes(os.urandom(4096))
    path = paths.get(adapter) or _write_lora(tiny_model_path, tmp_path / "lora.gguf")
    code = PRELUDE + "OUTCOME(lambda: LLM(model_kwargs={'lora_path': sys.argv[2]}).complete('hi'))"
    assert _child(code, tiny_model_path, path)["outcome"] == outcome


# --- tokenization: llama.cpp's SentencePiece byte fallback is quadratic ------------------


def test_a_prompt_of_unknown_characters_past_the_context_is_refused_at_once(
    tiny_model_path: Path,
) -> None:
    # Two million NUL bytes took hours to tokenize (each one a byte-fallback token).
    code = PRELUDE + "OUTCOME(lambda: LLM().complete('\\x00' * 2_000_000))"
    result = _child(code, tiny_model_path)
    assert result["outcome"] == "ContextWindowExceededError", result


def test_long_text_still_tokenizes(tiny_llm: LlamaCPP) -> None:
    text = "hello there " * 6_000  # past the size where unknown characters are counted
    assert tiny_llm.count_tokens(text) > 6_000
    with pytest.raises(ContextWindowExceededError, match="the prompt is"):
        tiny_llm.complete(text)


# --- JSON schemas and grammars ----------------------------------------------------------


def _chain(n: int) -> dict[str, Any]:
    """n $defs, each an object that requires the next: nothing recursive, 90 bytes a link."""
    defs: dict[str, Any] = {
        f"d{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}},
            "required": ["a"],
        }
        for i in range(n)
    }
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def test_a_long_chain_of_refs_does_not_overflow_the_stack(tiny_model_path: Path) -> None:
    # llguidance's compiler recursed through 1,000 links past an 8 MiB stack: SIGSEGV
    code = PRELUDE + (
        "from tests.test_hostile_engine_review import _chain\n"
        "OUTCOME(lambda: LLM().complete('hi', json_schema=_chain(2_000), max_tokens=2).text)"
    )
    result = _child(code, tiny_model_path)
    assert result["outcome"] in ("ok", "IncompleteJSONError"), result


def test_a_long_chain_of_grammar_rules_does_not_overflow_the_stack(tiny_model_path: Path) -> None:
    rules = "\n".join(f'a{i}: a{i + 1} | "x"' for i in range(3_000))
    grammar = f'start: a0\n{rules}\na3000: "y"'
    code = PRELUDE + "OUTCOME(lambda: LLM().complete('hi', grammar=sys.argv[2]).text)"
    result = _child(code, tiny_model_path, grammar)
    assert result["outcome"] in ("ok", "SchemaError"), result


@pytest.mark.parametrize(
    ("schema", "finite"),
    [
        (_chain(3_000), True),
        ({**_chain(50), "$defs": {**_chain(50)["$defs"], "d50": {"$ref": "#/$defs/d0"}}}, False),
        (
            {
                "$defs": {
                    "a": {"anyOf": [{"$ref": "#/$defs/b"}, {"$ref": "#/$defs/c"}]},
                    "b": {"type": "array", "items": {"$ref": "#/$defs/a"}, "minItems": 1},
                    "c": {"type": "object", "required": ["x"], "properties": {"x": {}}},
                },
                "$ref": "#/$defs/a",
            },
            True,
        ),
        ({"$defs": {"a": [{"type": "string"}]}, "$ref": "#/$defs/a/\u00b2"}, True),  # int("²")
    ],
    ids=["chain", "cycle", "alternative", "superscript index"],
)
def test_the_finite_value_check(schema: dict[str, Any], finite: bool) -> None:
    assert _admits_finite_value(schema) is finite


@pytest.mark.parametrize(
    "grammar",
    [
        "root ::= r0\n"
        + "\n".join(f'r{i} ::= "x" | r{i + 1}' for i in range(MAX_GRAMMAR_RULES + 1))
        + f'\nr{MAX_GRAMMAR_RULES + 1} ::= "y"',  # converting it is quadratic in the chain
        'root ::= "' + "x" * MAX_GRAMMAR_BYTES + '"',
    ],
    ids=["rules", "bytes"],
)
def test_an_oversized_grammar_is_refused(tiny_llm: LlamaCPP, grammar: str) -> None:
    with pytest.raises(SchemaError, match="more than"):
        tiny_llm.complete("hi", grammar=grammar)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"type": "string", "maxLength": ' + "9" * 5_000 + "}"],
    ids=["nested", "5000 digits"],
)
def test_a_schema_given_as_json_text_fails_typed(text: str) -> None:
    with pytest.raises(SchemaError):
        schema_from_options({"json_schema": text})


def test_a_constraint_llguidance_gives_up_on_mid_generation_is_a_schema_error(
    tiny_llm: LlamaCPP,
) -> None:
    # The mask computation ran out of lexer fuel and left the matcher in error: the answer
    # ended as if the model had stopped (an empty grammar answer passed as a success).
    with pytest.raises(SchemaError, match="lexer"):
        tiny_llm.complete("hi", json_schema={"const": "x" * 600_000})


# --- chat templates ---------------------------------------------------------------------


def test_round_to_a_huge_negative_precision_is_refused(tiny_model_path: Path) -> None:
    code = (
        "import json\nfrom serapeum.core.llms import Message\n"
        "from serapeum.llama_cpp.chat_template import ChatTemplateError, render_chat_template\n"
        "try:\n"
        "    render_chat_template('{{ 5|round(-1000000000) }}', [Message.user('hi')])\n"
        "    print(json.dumps({'outcome': 'rendered'}))\n"
        "except ChatTemplateError as exc:\n"
        "    print(json.dumps({'outcome': 'ChatTemplateError', 'message': str(exc)}))\n"
    )
    result = _child(code)  # int.__round__(-10**9) computed 10**(10**9): hours
    assert result["outcome"] == "ChatTemplateError"
    assert "bit integer" in result["message"]


def test_lipsum_with_float_sizes_is_checked_before_it_runs() -> None:
    with pytest.raises(ChatTemplateError, match="lipsum"):
        render_chat_template("{{ lipsum(1, false, 10, 100000000.0) }}", [Message.user("hi")])


def test_the_bounds_stop_scaling_with_a_huge_conversation() -> None:
    """A 10-million-character conversation allowed 320 M characters (1.2 GB of emoji)."""
    limits = Limits.for_input(100_000_000, 1)
    assert (limits.allocated_chars + limits.value_chars) * 4 <= 256 * 2**20
    assert limits.seconds <= 4.0


def test_every_error_here_is_a_serapeum_error() -> None:
    assert issubclass(ChatTemplateError, SerapeumError)
    assert issubclass(SchemaError, SerapeumError)
