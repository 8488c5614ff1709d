"""Every generation option, load option and argument is checked before the model lock is taken.

Bad values are one typed error (``ConfigurationError``, a ``ValueError`` under
``SerapeumError``; ``SchemaError`` for schemas and grammars) whose message says what is
accepted. "Before the lock" is shown for real: the test thread holds the model's lock while
it makes the bad call, so a check made after taking the lock would surface as
``ModelBusyError`` instead. Options that make llama.cpp abort the process are tried raw in a
child process (which dies) and through ``LlamaCPP`` in another (which raises).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.llms import Message
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.sampling import SamplerSettings, check_against_vocabulary
from serapeum.llama_cpp.backend.structured import MAX_SCHEMA_DEPTH, check_schema
from serapeum.llama_cpp.errors import IncompleteJSONError, ModelBusyError, SchemaError
from serapeum.llama_cpp.load_options import KV_CACHE_TYPES, check_load_options

TINY_VOCAB = 471  # the tiny model's vocabulary size (testing.tiny_model)


@pytest.fixture
def held(tiny_llm: LlamaCPP) -> Iterator[LlamaCPP]:
    """The tiny model with its lock held by this thread: any call that reaches the lock
    raises ``ModelBusyError``, so a ``ConfigurationError`` proves the check came first."""
    lock = tiny_llm.loaded_model.lock
    lock.acquire()
    try:
        yield tiny_llm
    finally:
        lock.release()


def _refused(error: type[Exception], match: str, call: Any) -> Exception:
    with pytest.raises(error, match=match) as info:
        call()
    assert isinstance(info.value, SerapeumError)
    assert not isinstance(info.value, ModelBusyError)
    return info.value


# -- generation options ------------------------------------------------------------------
BAD_GENERATION_OPTIONS = [
    # top_k is a C int in llama.cpp; <= 0 would mean "no limit" there, so 0 is that, and
    # a negative value or one past int32 (which ctypes would wrap) is refused.
    ({"top_k": -5}, r"top_k must be an integer from 0 \(no limit\) to 2147483647"),
    ({"top_k": 10**12}, r"top_k must be an integer from 0 \(no limit\) to 2147483647"),
    ({"top_k": 4.5}, "top_k must be an integer"),
    ({"top_p": math.nan}, r"top_p must be a number from 0\.0 to 1\.0"),
    ({"min_p": 5}, r"min_p must be a number from 0\.0 to 1\.0"),
    ({"typical_p": -1}, r"typical_p must be a number from 0\.0 to 1\.0"),
    ({"repeat_penalty": math.nan}, "repeat_penalty must be a finite number > 0"),
    ({"repeat_penalty": -1}, "repeat_penalty must be a finite number > 0"),
    ({"repeat_penalty": 0}, "repeat_penalty must be a finite number > 0"),
    ({"frequency_penalty": math.inf}, "frequency_penalty must be a finite number"),
    ({"presence_penalty": -math.inf}, "presence_penalty must be a finite number"),
    ({"mirostat_mode": 7}, r"mirostat_mode must be 0 \(off\), 1 or 2"),
    ({"mirostat_tau": math.nan}, "mirostat_tau must be a finite number >= 0"),
    ({"seed": 2**64}, "seed must be None or an integer from 0 to 4294967295"),
    ({"seed": -1}, "seed must be None or an integer from 0 to 4294967295"),
    ({"logit_bias": {5: math.nan}}, "logit_bias values must be finite numbers"),
    ({"logit_bias": {5: math.inf}}, "logit_bias values must be finite numbers"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids"),
    ({"logit_bias": {"five": 1.0}}, "logit_bias keys must be token ids"),
    ({"logit_bias": [1, 2]}, "logit_bias must be a dict of token id"),
    ({"logprobs": -1}, "logprobs must be None or an integer >= 0"),
    ({"logits_processor": 1}, "logits_processor must be a callable"),
    ({"logits_processor": [abs, 1]}, "logits_processor must be a callable"),
    ({"stopping_criteria": "x"}, "stopping_criteria must be a callable"),
    ({"grammar": 42}, "grammar must be a GBNF grammar"),
    ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "not both"),
    ({"stop": 123}, "stop must be a str or a list of str"),
    ({"stop": ["ok", 1]}, "stop must be a str or a list of str"),
    ({"cancel": 5}, "cancel must be a serapeum.core.CancelToken"),
    ({"tfs_z": math.nan}, "tfs_z must be None or a finite number"),
    ({"temperature": math.nan}, "temperature must be a number from 0.0 to 1.0"),
]


@pytest.mark.parametrize(
    ("options", "message"), BAD_GENERATION_OPTIONS, ids=[repr(o) for o, _ in BAD_GENERATION_OPTIONS]
)
def test_bad_generation_option_is_refused_before_the_lock(
    held: LlamaCPP, options: dict[str, Any], message: str
) -> None:
    error = _refused(ConfigurationError, message, lambda: held.complete("hi", **options))
    assert isinstance(error, ValueError)
    # a stream refuses at the call, not at its first chunk
    _refused(ConfigurationError, message, lambda: held.complete("hi", stream=True, **options))


def test_bad_generation_option_in_generate_kwargs_is_refused(tiny_llm: LlamaCPP) -> None:
    # Refused at construction now, not at the first call.
    with pytest.raises(ConfigurationError, match="top_p must be a number"):
        LlamaCPP(
            model_path=tiny_llm.model_path,
            formatter="llama2",
            generate_kwargs={"top_p": math.nan},
        )
    with pytest.raises(ConfigurationError, match="stop must be a str"):
        LlamaCPP(model_path=tiny_llm.model_path, formatter="llama2", generate_kwargs={"stop": 1})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"logit_bias": {TINY_VOCAB: 1.0}},
            rf"outside this model's vocabulary \(ids 0 to {TINY_VOCAB - 1}\)",
        ),
        ({"logit_bias": {10**6: -100}}, "outside this model's vocabulary"),
        ({"logprobs": 10**6}, rf"logprobs must be None or an integer from 0 to {TINY_VOCAB}"),
    ],
)
def test_vocabulary_bounds_are_checked_before_the_lock(
    held: LlamaCPP, options: dict[str, Any], message: str
) -> None:
    _refused(ConfigurationError, message, lambda: held.complete("hi", **options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"logit_bias": {TINY_VOCAB: 1.0}}, "outside this model's vocabulary"),
        ({"logprobs": 10**6}, "logprobs must be None or an integer from 0 to"),
    ],
)
def test_vocabulary_bounds_refuse_a_stream_at_the_call(
    held: LlamaCPP, options: dict[str, Any], message: str
) -> None:
    """Needs the backend's ``check_options`` to call ``check_against_vocabulary``."""
    _refused(ConfigurationError, message, lambda: held.complete("hi", stream=True, **options))


def test_accepted_values_at_the_edges_still_generate(tiny_llm: LlamaCPP) -> None:
    for options in (
        {"top_k": 0},  # llama.cpp: no top-k limit
        {"top_k": 40.0},  # an integral float, as the seed accepted
        {"top_p": 1.0, "min_p": 0.0, "typical_p": 0.0},
        {"seed": 2**32 - 1, "temperature": 0.5},
        {"logit_bias": {"5": -100, TINY_VOCAB - 1: 2.5}},  # OpenAI's JSON sends str ids
        {"mirostat_mode": 2, "temperature": 0.5},
        {"frequency_penalty": 3.0, "presence_penalty": -3.0},
    ):
        response = tiny_llm.complete("hi", max_new_tokens=3, **options)
        assert response.usage is not None, options


def test_logprobs_up_to_the_whole_vocabulary(tiny_llm: LlamaCPP) -> None:
    response = tiny_llm.complete("hi", max_new_tokens=2, logprobs=TINY_VOCAB)
    top = response.raw["choices"][0]["logprobs"]["top_logprobs"]
    assert len(top) == 2
    # every token's alternative is there (pieces that spell the same text share a key)
    assert 0 < len(top[0]) <= TINY_VOCAB


def test_lists_of_processors_and_criteria_are_applied(tiny_llm: LlamaCPP) -> None:
    target = tiny_llm.tokenize("yes")[-1]

    def force(_ids: Any, scores: Any) -> Any:
        scores[:] = -1e9
        scores[target] = 0.0
        return scores

    calls: list[int] = []

    def never(_ids: Any, _logits: Any) -> bool:
        calls.append(1)
        return False

    def always(_ids: Any, _logits: Any) -> bool:
        return True

    response = tiny_llm.complete(
        "hi",
        max_new_tokens=5,
        logits_processor=[lambda _ids, scores: scores, force],
        stopping_criteria=[never, always],
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == 1  # "always" stopped it after one token
    assert calls == [1]
    forced = tiny_llm.loaded_model.piece(target).decode("utf-8")
    assert response.text.strip() == forced.strip()  # the list's processors both ran


def test_a_logits_processor_that_returns_nothing_is_a_typed_error(tiny_llm: LlamaCPP) -> None:
    def in_place(_ids: Any, scores: Any) -> None:
        scores[0] = 0.0

    with pytest.raises(ConfigurationError, match="logits_processor must return the scores"):
        tiny_llm.complete("hi", max_new_tokens=2, logits_processor=in_place)
    assert not tiny_llm.loaded_model.lock.locked()


# -- grammars ------------------------------------------------------------------------------
def test_a_gbnf_grammar_string_constrains_generation(tiny_llm: LlamaCPP) -> None:
    from llama_cpp import LlamaGrammar

    grammar = 'root ::= "yes" | "no"'
    assert tiny_llm.complete("hi", grammar=grammar, max_new_tokens=5).text in ("yes", "no")
    as_object = LlamaGrammar.from_string(grammar, verbose=False)
    assert tiny_llm.complete("hi", grammar=as_object, max_new_tokens=5).text in ("yes", "no")
    sampled = tiny_llm.complete("hi", grammar=grammar, max_new_tokens=5, temperature=0.9, seed=3)
    assert sampled.text in ("yes", "no")


@pytest.mark.parametrize(
    ("grammar", "message"),
    [
        ("root ::= …", "not a valid GBNF grammar"),
        ("root ::= undefined-rule", "not a valid GBNF grammar"),
        ("", "not a valid GBNF grammar"),
        ("root ::= root", "cannot constrain generation"),  # no finite text at all
    ],
)
def test_a_bad_grammar_is_a_schema_error_before_the_lock(
    held: LlamaCPP, grammar: str, message: str
) -> None:
    _refused(SchemaError, message, lambda: held.complete("hi", grammar=grammar))


# -- JSON schemas ----------------------------------------------------------------------------
def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


INFINITE_SCHEMAS = [
    {"$ref": "#"},
    {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
    {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/node"}},
                "required": ["child"],
            }
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"}},
        "required": ["root"],
    },
    {"anyOf": [{"$ref": "#"}, {"allOf": [{"$ref": "#"}]}]},
]


@pytest.mark.parametrize("schema", INFINITE_SCHEMAS, ids=range(len(INFINITE_SCHEMAS)))
def test_a_schema_with_no_finite_value_is_refused_before_the_lock(
    held: LlamaCPP, schema: dict[str, Any]
) -> None:
    _refused(SchemaError, "admits no finite value", lambda: held.complete("hi", json_schema=schema))
    with pytest.raises(SchemaError):
        check_schema(schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"$ref": "#"}},  # [] ends it
        {"type": "object", "properties": {"a": {"$ref": "#"}}},  # {} ends it
        {"type": ["object", "null"], "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
        {"anyOf": [{"$ref": "#"}, {"type": "integer"}]},
        {"properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # no type: 1 is valid
    ],
)
def test_recursive_schemas_with_a_way_out_are_accepted(
    tiny_llm: LlamaCPP, schema: dict[str, Any]
) -> None:
    check_schema(schema)
    try:
        response = tiny_llm.complete("hi", json_schema=schema, max_new_tokens=24)
    except IncompleteJSONError:
        return  # a random model may nest until max_new_tokens: typed, never silent
    json.loads(response.text)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (_nested(2000), f"nested more than {MAX_SCHEMA_DEPTH} levels deep"),
        (_nested(MAX_SCHEMA_DEPTH + 5), f"nested more than {MAX_SCHEMA_DEPTH} levels deep"),
        ({"type": "number", "maximum": math.nan}, "must be JSON data"),
        ({"type": "string", "enum": {"a", "b"}}, "must be JSON data"),
    ],
    ids=["2000-deep", "just-too-deep", "nan", "set"],
)
def test_unusable_schema_documents_are_schema_errors_before_the_lock(
    held: LlamaCPP, schema: dict[str, Any], message: str
) -> None:
    _refused(SchemaError, message, lambda: held.complete("hi", json_schema=schema))


def test_a_constrained_answer_that_does_not_parse_is_never_returned(tiny_llm: LlamaCPP) -> None:
    # The stop sequence '"' cuts the JSON string at its opening quote: nothing that parses.
    with pytest.raises(IncompleteJSONError, match="stop sequence") as info:
        tiny_llm.complete("hi", json_schema={"type": "string"}, stop=['"'], max_new_tokens=8)
    assert info.value.text == ""
    with pytest.raises(IncompleteJSONError, match="stop sequence"):
        list(
            tiny_llm.complete(
                "hi", json_schema={"type": "string"}, stop=['"'], max_new_tokens=8, stream=True
            )
        )
    assert not tiny_llm.loaded_model.lock.locked()


def test_a_dead_end_in_a_constraint_is_a_typed_error(tiny_llm: LlamaCPP) -> None:
    """Logits that are all NaN leave nothing the schema allows to pick (a real dead end)."""

    def broken(_ids: Any, scores: Any) -> Any:
        return np.full_like(scores, np.nan)

    with pytest.raises(SchemaError, match="cannot continue within the JSON Schema"):
        tiny_llm.complete("hi", json_schema={"type": "object"}, logits_processor=broken)
    assert not tiny_llm.loaded_model.lock.locked()


# -- prompts, messages and the instance's own arguments --------------------------------------
def test_lone_surrogates_are_refused_with_their_index(held: LlamaCPP) -> None:
    _refused(
        ConfigurationError,
        r"the prompt has an unpaired surrogate '\\ud800' at index 2",
        lambda: held.complete("ab\ud800c"),
    )
    _refused(ConfigurationError, "at index 0", lambda: held.complete("\udfff", formatted=True))
    _refused(
        ConfigurationError,
        r"messages\[1\]\.content has an unpaired surrogate '\\udc80' at index 3",
        lambda: held.chat([Message.user("ok"), Message.user("abc\udc80")]),
    )


def test_chat_needs_messages_or_openai_style_dicts(held: LlamaCPP) -> None:
    _refused(
        ConfigurationError,
        r"messages\[0\] must be a serapeum Message",
        lambda: held.chat(["hello"]),
    )
    _refused(ConfigurationError, "messages must be a list", lambda: held.chat("hello"))
    _refused(ConfigurationError, "messages must be a list", lambda: held.chat(Message.user("x")))
    _refused(
        ConfigurationError,
        r"messages\[0\] has the unknown role",
        lambda: held.chat([{"role": "wizard", "content": "hi"}]),
    )
    with pytest.raises(ConfigurationError, match="must be a serapeum Message"):
        asyncio.run(held.achat(["hello"]))


def test_a_prompt_must_be_text(held: LlamaCPP) -> None:
    _refused(ConfigurationError, "prompt must be a str, got bytes", lambda: held.complete(b"hi"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"system_prompt": 123}, "system_prompt must be a str or None, got int"),
        ({"system_prompt": "be \ud800 nice"}, "system_prompt has an unpaired surrogate"),
        ({"verbose": "yes"}, "verbose must be True or False"),
        ({"model_kwargs": 5}, "model_kwargs must be a dict"),
        ({"generate_kwargs": [1]}, "generate_kwargs must be a dict"),
        ({"messages_to_prompt": 5}, "messages_to_prompt must be a function"),
        ({"download_progress": "yes"}, "download_progress must be None, True, False"),
        ({"context_window": 2**40}, "context_window must be a positive integer"),
        ({"stop": 123}, "stop must be a str or a list of str"),
    ],
)
def test_bad_constructor_arguments(
    tiny_model_path: Path, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", **arguments)


# -- load options (model_kwargs) ---------------------------------------------------------------
BAD_LOAD_OPTIONS = [
    ({"n_thread": 2}, r"unknown load option 'n_thread'.*did you mean 'n_threads'"),
    ({"ctx_size": 2048}, r"unknown load option 'ctx_size'"),
    ({"model_path": "/x.gguf"}, "use model_path="),
    ({"n_threads": -5}, r"n_threads must be None \(every usable CPU\) or an integer from 1 to 512"),
    ({"n_threads_batch": 0}, "n_threads_batch must be None"),
    ({"n_batch": 0}, "n_batch must be an integer from 1 to"),
    ({"n_batch": -5}, "n_batch must be an integer from 1 to"),  # raw: segfault
    ({"n_ubatch": -1}, "n_ubatch must be an integer from 1 to"),
    ({"n_ctx": -1}, r"n_ctx must be an integer from 0 \(the model's training context\)"),
    ({"n_ctx": 2**32 + 64}, "n_ctx must be an integer"),  # raw: wraps to 64
    ({"seed": 2**64}, "seed must be an integer from -1"),
    ({"rope_freq_base": math.nan}, "rope_freq_base must be a finite number >= 0"),
    ({"rope_freq_scale": -1.0}, "rope_freq_scale must be a finite number >= 0"),
    ({"yarn_ext_factor": math.inf}, "yarn_ext_factor must be a finite number"),
    ({"yarn_orig_ctx": -1}, "yarn_orig_ctx must be an integer"),
    ({"rope_scaling_type": 9}, "rope_scaling_type must be None or one of"),
    ({"pooling_type": 9}, "pooling_type must be one of"),
    ({"split_mode": 9}, "split_mode must be one of"),
    ({"numa": 9}, "numa must be True, False or a ggml NUMA strategy"),
    ({"type_k": 999}, r"type_k must be None \(f16\) or a KV-cache type.*8 \(q8_0\)"),
    ({"type_k": 12}, "type_k must be None"),  # q4_K: a real ggml type, not a KV-cache one
    ({"type_v": "q3_k"}, "type_v must be None"),
    ({"type_v": 8}, "quantized KV-cache type.*flash_attn=True"),
    ({"flash_attn": "yes"}, "flash_attn must be True or False"),
    ({"vocab_only": True}, "vocab_only must be False"),
    ({"embedding": True}, "embedding must be False"),
    ({"tensor_split": [0.5, math.nan]}, "tensor_split must be None or a list"),
    ({"kv_overrides": {"llama.block_count": 0}}, "kv_overrides may not change 'llama.block_count'"),
    ({"kv_overrides": {"llama.expert_count": 4}}, "may not change 'llama.expert_count'"),
    ({"kv_overrides": {"llama.attention.layer_norm_rms_epsilon": -1.0}}, "kv_overrides must be"),
    ({"kv_overrides": {"tokenizer.ggml.eos_token_id": -5}}, "kv_overrides must be"),
    ({"kv_overrides": {"a" * 200: 1}}, "kv_overrides must be"),
    ({"kv_overrides": {"general.name": "x" * 200}}, "kv_overrides must be"),
    ({"lora_path": 5}, "lora_path must be None or a path"),
    ({"chat_handler": 5}, "chat_handler must be None or a callable"),
]


@pytest.mark.parametrize(
    ("model_kwargs", "message"), BAD_LOAD_OPTIONS, ids=[repr(o)[:60] for o, _ in BAD_LOAD_OPTIONS]
)
def test_bad_load_option_is_refused_before_the_model_is_touched(
    tmp_path: Path, model_kwargs: dict[str, Any], message: str
) -> None:
    # The model file does not even exist: the options are refused before it is looked at.
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ConfigurationError, match=message) as info:
        LlamaCPP(model_path=str(missing), formatter="llama2", model_kwargs=model_kwargs)
    assert "does not exist" not in str(info.value)
    with pytest.raises(ConfigurationError, match=message):
        check_load_options(model_kwargs)


def test_good_load_options_are_passed_on_normalised() -> None:
    checked = check_load_options(
        {
            "n_ctx": 0,
            "n_threads": None,
            "type_k": "Q8_0",
            "type_v": "q4_0",
            "flash_attn": True,
            "seed": -1,
            "rope_freq_base": 10000,
            "kv_overrides": {"tokenizer.ggml.add_bos_token": False, "llama.context_length": 64},
        }
    )
    assert checked["type_k"] == 8 and checked["type_v"] == 2
    assert checked["rope_freq_base"] == 10000.0
    assert KV_CACHE_TYPES[1] == "f16"


def test_a_quantized_k_cache_named_by_type_loads_and_generates(tiny_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        temperature=0.0,
        model_kwargs={"type_k": "q8_0", "n_threads": 1, "n_batch": 64},
    )
    assert llm.complete("hi", max_new_tokens=3).usage is not None


# Options that make raw llama-cpp-python kill the process (SIGABRT, SIGSEGV, SIGFPE).
ABORTING_LOAD_OPTIONS = [
    {"type_k": 999},
    {"type_k": 4},  # a removed ggml type id: SIGFPE
    {"n_batch": -5},
    {"kv_overrides": {"llama.block_count": 0}},
    {"kv_overrides": {"llama.attention.layer_norm_rms_epsilon": -1.0}},
]

_RAW_CHILD = """
import json, sys
import llama_cpp
options = json.loads(sys.argv[2])
llama = llama_cpp.Llama(model_path=sys.argv[1], verbose=False, **options)
llama.create_completion("hello", max_tokens=2)
print("survived")
"""

_OURS_CHILD = """
import json, sys
from serapeum.llama_cpp import LlamaCPP
for options in json.loads(sys.argv[2]):
    try:
        LlamaCPP(model_path=sys.argv[1], formatter="llama2", model_kwargs=options)
        print("accepted")
    except Exception as error:
        print(type(error).__name__)
"""


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "options", ABORTING_LOAD_OPTIONS, ids=[repr(o) for o in ABORTING_LOAD_OPTIONS]
)
def test_raw_llama_cpp_dies_on_these_load_options(tiny_model_path: Path, options: dict) -> None:
    raw = _child(_RAW_CHILD, str(tiny_model_path), json.dumps(options))
    assert raw.returncode < 0, (raw.returncode, raw.stdout, raw.stderr[-500:])  # a signal
    assert "survived" not in raw.stdout


def test_ours_raises_configuration_error_on_those_load_options(tiny_model_path: Path) -> None:
    ours = _child(_OURS_CHILD, str(tiny_model_path), json.dumps(ABORTING_LOAD_OPTIONS))
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ["ConfigurationError"] * len(ABORTING_LOAD_OPTIONS)


# -- the settings object itself -------------------------------------------------------------------
def test_sampler_settings_validate_on_construction() -> None:
    with pytest.raises(ConfigurationError, match="temperature must be a finite number >= 0"):
        SamplerSettings(temperature=math.inf)
    settings = SamplerSettings(temperature=0.0, logit_bias={3: 1.0}, logprobs=3)
    check_against_vocabulary(settings, 4)
    with pytest.raises(ConfigurationError, match=r"ids 0 to 2"):
        check_against_vocabulary(settings, 3)
    with pytest.raises(ConfigurationError, match="logprobs must be None or an integer from 0 to 4"):
        check_against_vocabulary(SamplerSettings(temperature=0.0, logprobs=5), 4)


# -- a vocabulary with invalid UTF-8 ---------------------------------------------------------------
@pytest.fixture(scope="module")
def invalid_utf8_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one token's text made invalid UTF-8 ("▁hello" -> "▁hell\\xff")."""
    from serapeum.llama_cpp.testing import build_tiny_gguf

    path = build_tiny_gguf(tmp_path_factory.mktemp("utf8") / "tiny-bad-utf8.gguf")
    data = bytearray(path.read_bytes())
    needle = "\u2581hello".encode()
    assert data.count(needle) == 1
    data[data.find(needle) + len(needle) - 1] = 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_token_with_invalid_utf8_is_not_an_error(invalid_utf8_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(invalid_utf8_model_path), formatter="llama2", temperature=0.0)
    model = llm.loaded_model
    assert "</s>" in model.info.special_tokens  # the vocabulary scan decodes with U+FFFD
    broken = next(t for t in range(model.n_vocab) if model.piece(t) == b" hell\xff")

    def force(_ids: Any, scores: Any) -> Any:
        scores[:] = -1e9
        scores[broken] = 0.0
        return scores

    answer = llm.complete("hi", max_new_tokens=2, logits_processor=force, logprobs=1)
    assert answer.text == " hell\ufffd hell\ufffd"
    assert llm.chat([Message.user("hello")], max_new_tokens=2).message.content is not None


def test_generate_kwargs_are_checked_at_construction(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="top_p"):
        LlamaCPP(
            model_path=str(tiny_model_path),
            formatter="llama2",
            generate_kwargs={"top_p": float("nan")},
        )
    with pytest.raises(ConfigurationError, match="logit_bias"):
        LlamaCPP(
            model_path=str(tiny_model_path),
            formatter="llama2",
            generate_kwargs={"logit_bias": {10**6: 1.0}},
        )


def test_a_wrong_type_is_also_a_type_error(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="llama2")
    with pytest.raises(TypeError):
        llm.complete(b"hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llm.chat(["hello"])  # type: ignore[list-item]


def test_a_schema_with_several_required_references_is_finite() -> None:
    """Regression: the second required $ref was never proved (pydantic's nested models)."""
    from serapeum.llama_cpp.backend.structured import check_schema

    person = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    order = {
        "$defs": {"Person": person, "Address": address},
        "type": "object",
        "properties": {
            "customer": {"$ref": "#/$defs/Person"},
            "shipping": {"$ref": "#/$defs/Address"},
        },
        "required": ["customer", "shipping"],
    }
    check_schema(order)
    looping = {**order, "$defs": {**order["$defs"], "Address": {"$ref": "#"}}}
    with pytest.raises(SchemaError, match="no finite value"):
        check_schema(looping)
