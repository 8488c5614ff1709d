"""The wire layer: SSE parsing, options, request bodies and reply parsing, server detection.

Payloads are copied from what the real servers send: llama-cpp-python 0.3.36's server
(captured from ``python -m llama_cpp.server`` on the tiny model) and llama.cpp's
``llama-server`` (server-task.cpp ``to_json_non_oaicompat``, server-common.cpp
``server_slot_stats::to_json``). The integration tests run a real llama-cpp-python server
on the tiny model, and a real llama-server where ``SERAPEUM_LLAMA_SERVER`` names a built
binary. ``httpx.MockTransport`` stands in only for what no local server can be made to do
(a llama-server that is still loading, a vLLM /v1/models listing).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins import GenerationRequest
from serapeum_backend_server import (
    ServerDisconnectedError,
    ServerProtocolError,
    ServerResponseError,
    ServerUnavailableError,
    server_options,
)
from serapeum_backend_server.detect import ServerDescription, check_health, describe_server
from serapeum_backend_server.errors import error_detail, is_retryable_status, response_error
from serapeum_backend_server.protocols import (
    LlamaServerProtocol,
    OpenAIProtocol,
    WireChunk,
    WireProtocol,
    check_options,
    gbnf_available,
    supported_options,
)
from serapeum_backend_server.sse import DONE, iter_sse_data

SECRET_URL = "http://user:hunter2@127.0.0.1:9"
PLAIN_URL = "http://127.0.0.1:9"


def _request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt_tokens": (1, 372, 285),
        "max_tokens": 8,
        "temperature": 0.0,
        "stop": ("</s>",),
        "prompt_text": "<s>hello",
    }
    values.update(overrides)
    return GenerationRequest(**values)


# -- SSE ----------------------------------------------------------------------------------
def test_sse_yields_each_event_data_and_skips_comments_and_other_fields() -> None:
    lines = [
        ": ping - 2026-12-01 21:07:19",
        "event: message",
        "id: 7",
        'data: {"a": 1}',
        "",
        "retry: 100",
        "data:no-space",
        "",
        ":",
        "",
        f"data: {DONE}",
        "",
    ]
    assert list(iter_sse_data(lines)) == ['{"a": 1}', "no-space", DONE]


def test_sse_joins_multiline_data_and_accepts_line_endings_and_a_bom() -> None:
    lines = ["\ufeffdata: first\r\n", "data:  second\n", "data\n", "\r\n", "data: x\r", "\n"]
    assert list(iter_sse_data(lines)) == ["first\n second\n", "x"]


def test_sse_drops_an_event_cut_off_before_its_blank_line() -> None:
    assert list(iter_sse_data(['data: {"content": "a"}', "", 'data: {"cont'])) == [
        '{"content": "a"}'
    ]


def test_sse_of_a_real_llama_cpp_python_stream() -> None:
    # sse-starlette with sep="\n", exactly as captured (one event, then [DONE])
    raw = (
        'data: {"id": "cmpl-1", "object": "text_completion", "created": 1796159239, '
        '"model": "/tmp/tiny.gguf", "choices": [{"text": " or", "index": 0, '
        '"logprobs": null, "finish_reason": null}]}\n\ndata: [DONE]\n\n'
    )
    payloads = list(iter_sse_data(raw.splitlines()))
    assert payloads[-1] == DONE
    assert json.loads(payloads[0])["choices"][0]["text"] == " or"


# -- options ------------------------------------------------------------------------------
def test_server_options_defaults_and_normalised_urls() -> None:
    options = server_options({"urls": ["http://a:8080/", "https://b/prefix/"]})
    assert options.urls == ("http://a:8080", "https://b/prefix")
    assert (options.protocol, options.routing, options.verify) == ("auto", "affinity", True)
    assert (options.connect_timeout, options.read_timeout) == (5.0, 600.0)
    assert (options.backoff_initial, options.backoff_max) == (0.5, 30.0)
    assert server_options({"url": "http://a:1", "context_window": 512}).n_ctx == 512


def test_server_options_never_show_the_api_key_and_refuse_url_credentials() -> None:
    options = server_options({"urls": PLAIN_URL, "api_key": "sk-topsecret"})
    assert options.api_key == "sk-topsecret"
    assert "topsecret" not in repr(options)
    # httpx would send user:password@ as Basic auth (replacing the bearer key) and log it.
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        server_options({"urls": SECRET_URL})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({}, "needs urls="),
        ({"urls": []}, "empty"),
        ({"urls": ["http://a", "http://a/"]}, "twice"),
        ({"urls": "ftp://a"}, "http(s) URL"),
        ({"urls": "localhost:8080"}, "http(s) URL"),
        ({"urls": "http://a:99999"}, "not a valid URL"),
        ({"urls": "http://a/?token=x"}, "query"),
        ({"urls": 5}, "a URL (str) or a list"),
        ({"urls": "http://a", "url": "http://b"}, "give 'urls' once"),
        ({"urls": "http://a", "protocl": "openai"}, "did you mean 'protocol'"),
        ({"urls": "http://a", "protocol": "opneai"}, "did you mean 'openai'"),
        ({"urls": "http://a", "routing": "fastest"}, "routing must be one of"),
        ({"urls": "http://a", "n_ctx": 0}, "positive int"),
        ({"urls": "http://a", "n_ctx": True}, "positive int"),
        ({"urls": "http://a", "api_key": ""}, "api_key"),
        ({"urls": "http://a", "api_key": "a\nb"}, "line breaks"),
        ({"urls": "http://a", "read_timeout": float("nan")}, "read_timeout"),
        ({"urls": "http://a", "connect_timeout": 0}, "connect_timeout"),
        ({"urls": "http://a", "verify": "/no/such/ca.pem"}, "no such CA bundle"),
        ({"urls": "http://a", "verify": 1}, "verify must be"),
        ({"urls": "http://a", "backoff_initial": 5, "backoff_max": 1}, "backoff_max"),
        ({"urls": "http://a", "model": ""}, "model must be"),
    ],
)
def test_server_options_refuse_bad_values(given: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as caught:
        server_options(given)
    assert words in str(caught.value)


def test_server_options_message_redacts_a_bad_url_with_credentials() -> None:
    with pytest.raises(ConfigurationError) as caught:
        server_options({"urls": "ftp://user:hunter2@host/x"})
    assert "hunter2" not in str(caught.value)


def test_server_options_accept_a_ca_bundle_path(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert server_options({"urls": "https://a", "verify": bundle}).verify == str(bundle)


# -- errors -------------------------------------------------------------------------------
def test_errors_derive_from_serapeum_and_the_builtin() -> None:
    assert issubclass(ServerUnavailableError, SerapeumError)
    assert issubclass(ServerUnavailableError, ConnectionError)
    assert issubclass(ServerDisconnectedError, ConnectionError)
    assert issubclass(ServerResponseError, RuntimeError)
    assert issubclass(ServerProtocolError, ServerResponseError)


def test_errors_redact_urls_everywhere() -> None:
    unavailable = ServerUnavailableError(
        problems={SECRET_URL: "GET http://u:hunter2@h/x?token=abc failed"}
    )
    assert "hunter2" not in str(unavailable) and "abc" not in str(unavailable)
    assert "127.0.0.1:9" in str(unavailable)
    assert list(unavailable.problems) == ["http://***@127.0.0.1:9"]
    cut = ServerDisconnectedError("lost", text="partial", server=SECRET_URL)
    assert (cut.text, cut.server) == ("partial", "http://***@127.0.0.1:9")


def test_response_error_for_auth_says_check_api_key() -> None:
    error = response_error(401, "Invalid API Key", server=SECRET_URL, action="GET /props")
    assert "check api_key" in str(error) and "hunter2" not in str(error)
    assert (error.status, error.detail) == (401, "Invalid API Key")
    assert "check api_key" not in str(response_error(400, "x", server="http://a", action="x"))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # llama-server (server-http.cpp, 401)
        (
            b'{"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}',
            "Invalid API Key",
        ),
        # llama-cpp-python (FastAPI HTTPException), as captured
        (b'{"detail":"Invalid API key"}', "Invalid API key"),
        # vLLM, older versions
        ('{"object": "error", "message": "bad model"}', "bad model"),
        ("<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (None, ""),
    ],
)
def test_error_detail_reads_each_servers_error_shape(body: Any, detail: str) -> None:
    assert error_detail(body) == detail


def test_retryable_statuses_exclude_500_and_client_errors() -> None:
    assert all(is_retryable_status(s) for s in (429, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (400, 401, 404, 422, 500))


# -- llama-server protocol ----------------------------------------------------------------
# A streamed /completion of the tiny model as llama-server (llama.cpp of llama-cpp-python
# 0.3.36) sent it, captured with curl; generation_settings trimmed. The partial events
# carry id_slot -1; the final one the slot, stop_type, the counts and timings.
TIMINGS = {
    "cache_n": 2,
    "prompt_n": 1,
    "prompt_ms": 0.45,
    "prompt_per_token_ms": 0.45,
    "prompt_per_second": 2222.222222222222,
    "predicted_n": 3,
    "predicted_ms": 0.618,
    "predicted_per_token_ms": 0.206,
    "predicted_per_second": 4854.368932038835,
}
PARTIAL = {
    "index": 0,
    "content": "6",
    "tokens": [277],
    "stop": False,
    "id_slot": -1,
    "tokens_predicted": 1,
    "tokens_evaluated": 3,
}
FINAL = {
    "index": 0,
    "content": "",
    "tokens": [],
    "id_slot": 0,
    "stop": True,
    "model": "/tmp/hA/tiny.gguf",
    "tokens_predicted": 3,
    "tokens_evaluated": 3,
    "generation_settings": {"seed": 4294967295, "n_predict": 3, "stream": True},
    "prompt": "<s> he",
    "has_new_line": False,
    "truncated": False,
    "stop_type": "limit",
    "stopping_word": "",
    "tokens_cached": 5,
    "timings": TIMINGS,
}


def test_llama_server_body_sends_token_ids_and_mapped_options() -> None:
    protocol = LlamaServerProtocol()
    request = _request(
        options={
            "seed": 7,
            "top_k": 5,
            "top_p": 0.9,
            "min_p": 0.1,
            "typical_p": 0.8,
            "repeat_penalty": 1.1,
            "presence_penalty": 0.2,
            "frequency_penalty": 0.3,
            "mirostat_mode": 2,
            "mirostat_tau": 4.0,
            "mirostat_eta": 0.2,
            "logprobs": 3,
            "logit_bias": {"42": -100.0, 7: 1},
            "tfs_z": 1.0,
            "grammar": None,
        }
    )
    path, body = protocol.completion_body(request, slot=1, stream=True)
    assert path == "/completion"
    assert body == {
        "prompt": [1, 372, 285],
        "n_predict": 8,
        "temperature": 0.0,
        "stop": ["</s>"],
        "stream": True,
        "cache_prompt": True,
        "id_slot": 1,
        "seed": 7,
        "top_k": 5,
        "top_p": 0.9,
        "min_p": 0.1,
        "typical_p": 0.8,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.3,
        "mirostat": 2,
        "mirostat_tau": 4.0,
        "mirostat_eta": 0.2,
        "n_probs": 3,
        "logit_bias": [[42, -100.0], [7, 1.0]],
    }
    _, plain = protocol.completion_body(_request(), slot=None, stream=False)
    assert "id_slot" not in plain and plain["stream"] is False


def test_llama_server_body_carries_schema_and_grammar() -> None:
    protocol = LlamaServerProtocol()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, body = protocol.completion_body(
        _request(options={"json_schema": schema}), slot=None, stream=False
    )
    assert body["json_schema"] == schema
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    _, body = protocol.completion_body(
        _request(options={"response_format": fmt}), slot=None, stream=False
    )
    assert body["json_schema"] == schema
    _, body = protocol.completion_body(
        _request(options={"response_format": {"type": "json_object"}}), slot=None, stream=False
    )
    assert body["json_schema"] == {"type": "object"}
    _, body = protocol.completion_body(
        _request(options={"grammar": 'root ::= "yes"'}), slot=None, stream=False
    )
    assert body["grammar"] == 'root ::= "yes"' and "json_schema" not in body


def test_llama_server_parses_partial_and_final_events() -> None:
    protocol = LlamaServerProtocol()
    first = protocol.parse_event(PARTIAL)
    assert first == WireChunk(delta="6", raw=PARTIAL)
    assert first.slot is None and first.finish_reason is None and first.usage is None
    # with timings_per_token a partial event carries timings too (no finish, no usage)
    timed = protocol.parse_event({**PARTIAL, "timings": TIMINGS})
    assert timed.finish_reason is None and timed.usage is None and timed.timing is not None
    final = protocol.parse_event(FINAL)
    assert final.delta == ""
    assert final.finish_reason is FinishReason.LENGTH
    assert final.slot == 0
    # tokens_evaluated is the whole prompt and cache_n of it was reused; tokens_cached (5)
    # is the slot's cache after the request (prompt + answer - 1), so it is not used
    assert final.usage == Usage(prompt_tokens=3, completion_tokens=3, cached_prompt_tokens=2)
    assert final.timing == Timing(
        time_to_first_token=0.00045,
        prompt_seconds=0.00045,
        generation_seconds=0.000618,
        tokens_per_second=4854.368932038835,
    )
    assert protocol.parse_event({**FINAL, "stop_type": "eos"}).finish_reason is FinishReason.STOP
    assert protocol.parse_event({**FINAL, "stop_type": "word"}).finish_reason is FinishReason.STOP


def test_llama_server_whole_reply_without_timings() -> None:
    reply = {**FINAL, "content": "66", "stop_type": "eos"}
    del reply["timings"]
    chunk = LlamaServerProtocol().parse_event(reply)
    assert chunk.delta == "66" and chunk.timing is None
    assert chunk.usage == Usage(prompt_tokens=3, completion_tokens=3, cached_prompt_tokens=0)


def test_llama_server_error_event_and_malformed_events() -> None:
    protocol = LlamaServerProtocol(server=SECRET_URL)
    # captured: llama-server's answer (HTTP 400) to a prompt longer than a slot's context;
    # an error met mid-stream arrives as the same object in a data: event
    error = {
        "error": {
            "code": 400,
            "message": "request (601 tokens) exceeds the available context size (512 tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 601,
            "n_ctx": 512,
        }
    }
    with pytest.raises(ServerResponseError) as caught:
        protocol.parse_event(error)
    assert caught.value.status == 400 and "context size" in caught.value.detail
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ServerProtocolError):
        protocol.parse_event([1, 2])
    with pytest.raises(ServerProtocolError):
        protocol.parse_event({**PARTIAL, "content": 5})


def test_llama_server_tokenize() -> None:
    protocol = LlamaServerProtocol()
    assert protocol.tokenize_body("<s>hi") == (
        "/tokenize",
        {"content": "<s>hi", "add_special": False, "parse_special": True},
    )
    assert protocol.parse_tokens({"tokens": [1, 2, 3]}) == [1, 2, 3]
    with pytest.raises(ServerProtocolError):
        protocol.parse_tokens({"tokens": [{"id": 1, "piece": "a"}]})


# -- OpenAI protocol ----------------------------------------------------------------------
LCP = OpenAIProtocol(
    "/tmp/tiny.gguf",
    "/extras/tokenize",
    "llama-cpp-python",
    adds_bos=True,
    bos_id=1,
    bos_text="<s>",
)
VLLM = OpenAIProtocol("meta/llama", "/tokenize", "vllm")
GENERIC = OpenAIProtocol("gpt-x")


def test_llama_cpp_python_body_sends_text_without_the_bos_the_server_adds() -> None:
    request = _request(
        options={
            "seed": 3,
            "top_k": 4,
            "repeat_penalty": 1.2,
            "mirostat_mode": 1,
            "logprobs": 2,
            "logit_bias": {5: -1.0},
        }
    )
    path, body = LCP.completion_body(request, slot=3, stream=True)
    assert path == "/v1/completions"
    assert body == {
        "prompt": "hello",
        "max_tokens": 8,
        "temperature": 0.0,
        "stop": ["</s>"],
        "stream": True,
        "model": "/tmp/tiny.gguf",
        "seed": 3,
        "top_k": 4,
        "repeat_penalty": 1.2,
        "mirostat_mode": 1,
        "logprobs": 2,
        "logit_bias": {"5": -1.0},
    }
    # without BOS text in the prompt, the text goes as it is
    _, body = LCP.completion_body(_request(prompt_text="hello"), slot=None, stream=False)
    assert body["prompt"] == "hello"
    # a server that does not add BOS gets the BOS text
    no_bos = OpenAIProtocol("m", "/extras/tokenize", "llama-cpp-python", bos_text="<s>")
    _, body = no_bos.completion_body(_request(), slot=None, stream=False)
    assert body["prompt"] == "<s>hello"


def test_text_protocols_need_prompt_text() -> None:
    with pytest.raises(ConfigurationError, match="prompt_text"):
        LCP.completion_body(_request(prompt_text=None), slot=None, stream=False)


@pytest.mark.skipif(not gbnf_available(), reason="llama_cpp is not importable")
def test_llama_cpp_python_json_schema_travels_as_gbnf_grammar() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, body = LCP.completion_body(
        _request(options={"json_schema": schema}), slot=None, stream=False
    )
    assert "json_schema" not in body
    assert 'a-kv ::= "\\"a\\""' in body["grammar"] and "root ::=" in body["grammar"]


def test_vllm_body_sends_token_ids_and_asks_for_stream_usage() -> None:
    request = _request(options={"repeat_penalty": 1.3, "top_k": 2, "min_p": 0.1})
    path, body = VLLM.completion_body(request, slot=0, stream=True)
    assert path == "/v1/completions"
    assert body["prompt"] == [1, 372, 285]
    assert body["repetition_penalty"] == 1.3 and "repeat_penalty" not in body
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "meta/llama"
    _, body = VLLM.completion_body(_request(), slot=None, stream=False)
    assert "stream_options" not in body


def test_openai_parses_real_llama_cpp_python_chunks() -> None:
    # captured from llama_cpp.server 0.3.36 (stream): text chunks, then finish_reason
    chunk = {
        "id": "cmpl-92321174",
        "object": "text_completion",
        "created": 1796159239,
        "model": "/tmp/hA/tiny.gguf",
        "choices": [{"text": " 7", "index": 0, "logprobs": None, "finish_reason": None}],
    }
    assert LCP.parse_event(chunk) == WireChunk(delta=" 7", raw=chunk)
    last = {
        **chunk,
        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
    }
    assert LCP.parse_event(last).finish_reason is FinishReason.LENGTH
    # a whole (non-streamed) reply, as captured, with usage
    whole = {
        **chunk,
        "choices": [{"text": "no", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8},
    }
    parsed = LCP.parse_event(whole)
    assert (parsed.delta, parsed.finish_reason) == ("no", FinishReason.STOP)
    assert parsed.usage == Usage(prompt_tokens=6, completion_tokens=2)


def test_openai_parses_a_usage_only_event_and_cached_tokens() -> None:
    event = {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
    chunk = VLLM.parse_event(event)
    assert chunk.delta == "" and chunk.finish_reason is None
    assert chunk.usage == Usage(prompt_tokens=10, completion_tokens=3, cached_prompt_tokens=8)
    abort = {"choices": [{"text": "", "index": 0, "finish_reason": "abort"}]}
    assert VLLM.parse_event(abort).finish_reason is FinishReason.STOP
    with pytest.raises(ServerProtocolError):
        VLLM.parse_event({"object": "text_completion"})
    with pytest.raises(ServerProtocolError):
        VLLM.parse_event({"choices": [{"text": 3}]})
    with pytest.raises(ServerResponseError):
        VLLM.parse_event({"error": {"message": "boom", "code": 500}})


def test_openai_tokenize_bodies_and_bos_stripping() -> None:
    assert LCP.tokenize_body("hi") == (
        "/extras/tokenize",
        {"input": "hi", "model": "/tmp/tiny.gguf"},
    )
    # captured: "<s>hello world" -> [1, 1, 372, ...]: one BOS added, one parsed from the text
    assert LCP.parse_tokens({"tokens": [1, 1, 372, 285]}) == [1, 372, 285]
    assert LCP.parse_tokens({"tokens": [1]}) == []
    assert VLLM.tokenize_body("hi") == (
        "/tokenize",
        {"model": "meta/llama", "prompt": "hi", "add_special_tokens": False},
    )
    assert VLLM.parse_tokens({"count": 2, "max_model_len": 4096, "tokens": [1, 2]}) == [1, 2]
    assert GENERIC.tokenize_body("hi") is None


# -- options a protocol can carry ---------------------------------------------------------
def test_every_protocol_satisfies_the_wire_protocol() -> None:
    for protocol in (LlamaServerProtocol(), LCP, VLLM, GENERIC):
        assert isinstance(protocol, WireProtocol)
        assert supported_options(protocol) == protocol.supported_options


def test_llama_server_carries_every_engine_sampling_option() -> None:
    engine = {
        "seed", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
        "frequency_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta", "logprobs",
        "json_schema", "grammar", "logit_bias", "response_format",
    }  # fmt: skip
    assert engine <= supported_options(LlamaServerProtocol())


@pytest.mark.parametrize(
    ("protocol", "option", "value"),
    [
        (LCP, "typical_p", 0.5),  # not a CreateCompletionRequest field: pydantic would drop it
        (VLLM, "grammar", 'root ::= "a"'),
        (VLLM, "json_schema", {"type": "object"}),
        (GENERIC, "top_k", 3),
        (GENERIC, "mirostat_mode", 1),
        (LlamaServerProtocol(), "no_such_option", 1),
    ],
)
def test_check_options_refuses_what_the_protocol_cannot_carry(
    protocol: WireProtocol, option: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_options(protocol, {option: value}, server=SECRET_URL)
    message = str(caught.value)
    assert repr(option) in message and protocol.name in message and "hunter2" not in message


def test_check_options_refuses_callables_everywhere_and_passes_none() -> None:
    for protocol in (LlamaServerProtocol(), LCP, VLLM):
        with pytest.raises(ConfigurationError, match="logits_processor is a Python callable"):
            check_options(protocol, {"logits_processor": lambda ids, logits: logits})
        check_options(protocol, {"logits_processor": None, "typical_p": None, "grammar": None})
    check_options(GENERIC, {"seed": 1, "tfs_z": 1.0, "penalize_nl": True})


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"top_p": "high"}, "top_p must be a finite number"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"logprobs": -1}, "logprobs must be an integer >= 0"),
        ({"grammar": 5}, "grammar must be a GBNF grammar"),
        ({"grammar": "root ::= x", "json_schema": {}}, "not both"),
        ({"json_schema": {}, "response_format": {"type": "json_object"}}, "not both"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": [1]}, "JSON Schema object"),
        ({"response_format": {"type": "yaml"}}, "response_format must be"),
        ({"logit_bias": {"a": 1}}, "token ids"),
        ({"logit_bias": {1: float("inf")}}, "finite numbers"),
        ({"logit_bias": [1, 2]}, "dict of token id"),
    ],
)
def test_check_options_refuses_bad_values(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_options(LlamaServerProtocol(), options)
    assert words in str(caught.value)


# -- detection without a server that can be provoked locally ------------------------------
# A llama-server's /props, trimmed to what detection reads (server-context.cpp get_res_props).
PROPS = {
    "default_generation_settings": {"n_ctx": 1024, "params": {"n_predict": -1}},
    "total_slots": 4,
    "model_alias": "tiny",
    "model_path": "/models/tiny.gguf",
    "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "build_info": "b1-abc",
    "is_sleeping": False,
}


def _mock_client(handler: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_describe_llama_server_from_props_and_one_tokenize() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/props":
            return httpx.Response(200, json=PROPS)
        body = json.loads(request.content)
        assert body == {"content": "<s>", "add_special": True, "parse_special": True}
        return httpx.Response(200, json={"tokens": [1, 1]})

    options = server_options({"urls": "http://llama:8080"})
    with _mock_client(handler) as client:
        described = describe_server(client, "http://llama:8080", options)
    assert seen == ["GET /props", "POST /tokenize"]
    assert isinstance(described.protocol, LlamaServerProtocol)
    assert (described.n_ctx, described.slots, described.model_id) == (1024, 4, "tiny")
    assert (described.bos_token, described.eos_token, described.bos_id, described.adds_bos) == (
        "<s>",
        "</s>",
        1,
        True,
    )
    assert described.chat_template == PROPS["chat_template"] and described.can_tokenize


def test_describe_a_loading_llama_server_is_unavailable() -> None:
    loading = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
    options = server_options({"urls": PLAIN_URL})
    with (
        _mock_client(lambda request: httpx.Response(503, json=loading)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        describe_server(client, SECRET_URL, options)
    assert "Loading model" in str(caught.value) and "hunter2" not in str(caught.value)


def test_describe_vllm_from_its_model_card() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/props":
            return httpx.Response(404, json={"detail": "Not Found"})
        card = {"id": "meta/llama", "object": "model", "owned_by": "vllm", "max_model_len": 4096}
        return httpx.Response(200, json={"object": "list", "data": [card]})

    with _mock_client(handler) as client:
        described = describe_server(
            client, "http://v:8000", server_options({"urls": "http://v:8000"})
        )
    assert described.protocol == OpenAIProtocol(
        "meta/llama", "/tokenize", "vllm", server="http://v:8000"
    )
    assert described.n_ctx == 4096 and described.slots == 1


def test_describe_forced_llama_server_on_another_server_says_so() -> None:
    options = server_options({"urls": "http://x", "protocol": "llama-server"})
    with (
        _mock_client(lambda request: httpx.Response(404, json={"detail": "Not Found"})) as client,
        pytest.raises(ServerProtocolError, match="protocol='openai'"),
    ):
        describe_server(client, "http://x", options)


def test_describe_something_that_is_not_an_llm_server() -> None:
    with (
        _mock_client(lambda request: httpx.Response(404, text="<html>nope</html>")) as client,
        pytest.raises(ServerProtocolError, match="neither a llama"),
    ):
        describe_server(client, "http://x", server_options({"urls": "http://x"}))


def test_describe_with_several_models_needs_model() -> None:
    listing = {"data": [{"id": "a", "owned_by": "x"}, {"id": "b", "owned_by": "x"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=listing)
        return httpx.Response(404, json={"detail": "Not Found"})

    with _mock_client(handler) as client:
        with pytest.raises(ConfigurationError, match="choose one with model="):
            describe_server(client, "http://x", server_options({"urls": "http://x"}))
        with pytest.raises(ConfigurationError, match="is not served"):
            describe_server(client, "http://x", server_options({"urls": "http://x", "model": "c"}))
        described = describe_server(
            client, "http://x", server_options({"urls": "http://x", "model": "b"})
        )
    assert described.protocol == OpenAIProtocol("b", None, "openai", server="http://x")
    assert not described.can_tokenize


def test_describe_a_closed_port_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://user:hunter2@127.0.0.1:{port}"
    with httpx.Client(timeout=5) as client, pytest.raises(ServerUnavailableError) as caught:
        describe_server(client, url, server_options({"urls": f"http://127.0.0.1:{port}"}))
    assert "cannot connect" in str(caught.value) and "hunter2" not in str(caught.value)
    assert list(caught.value.problems) == [f"http://***@127.0.0.1:{port}"]


# -- a real llama-cpp-python server -------------------------------------------------------
API_KEY = "wire-test-key"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # llama_cpp.server reads its settings from the environment (PORT, MODEL, API_KEY...)
    keep = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "SYSTEMROOT")
    return {name: os.environ[name] for name in keep if name in os.environ}


def _wait_until_up(
    process: subprocess.Popen[bytes], url: str, log: Path, headers: dict[str, str]
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server did not come up in 120 s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def lcp_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m llama_cpp.server`` on the tiny model (with an API key); its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("lcp-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_model_path),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512",
        "--n_threads", "1", "--n_threads_batch", "1", "--api_key", API_KEY,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, f"{url}/v1/models", log, {"Authorization": f"Bearer {API_KEY}"})
        yield url
    finally:
        _stop(process)


def _client(api_key: str | None = API_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(headers=headers, timeout=httpx.Timeout(60, connect=5))


def _stream(
    client: httpx.Client, url: str, path: str, body: dict[str, Any], protocol: WireProtocol
) -> list[WireChunk]:
    chunks = []
    with client.stream("POST", url + path, json=body) as response:
        assert response.status_code == 200, response.read()
        for data in iter_sse_data(response.iter_lines()):
            if data == DONE:
                break
            chunks.append(protocol.parse_event(json.loads(data)))
    return chunks


def test_llama_cpp_python_server_round_trip(lcp_server: str, tiny_model_path: Path) -> None:
    options = server_options({"urls": lcp_server, "api_key": API_KEY})
    with _client() as client:
        described = describe_server(client, lcp_server, options)
        protocol = described.protocol
        assert isinstance(protocol, OpenAIProtocol)
        assert protocol.dialect == "llama-cpp-python" and described.can_tokenize
        assert described.model_id == str(tiny_model_path)
        assert (described.adds_bos, described.bos_id, described.bos_token) == (True, 1, "<s>")
        assert described.n_ctx is None and described.slots == 1
        check_health(client, described)

        # tokenize: the BOS the server adds is removed; one parsed from the text is kept
        tokenize = protocol.tokenize_body("<s>hello world")
        assert tokenize is not None
        answer = client.post(lcp_server + tokenize[0], json=tokenize[1]).json()
        tokens = protocol.parse_tokens(answer)
        assert tokens[0] == 1 and tokens[1] != 1

        request = _request(
            prompt_tokens=tokens, prompt_text="<s>hello world", max_tokens=4, stop=(),
            options={"seed": 1, "top_k": 1, "grammar": 'root ::= "yes" | "no"'},
        )  # fmt: skip
        check_options(protocol, request.options)
        path, body = protocol.completion_body(request, slot=None, stream=True)
        chunks = _stream(client, lcp_server, path, body, protocol)
    text = "".join(chunk.delta for chunk in chunks)
    assert text in ("yes", "no")
    assert [chunk.finish_reason for chunk in chunks][-1] is FinishReason.STOP
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    assert all(chunk.usage is None for chunk in chunks)  # this server streams no usage


def test_llama_cpp_python_server_whole_reply_has_usage(lcp_server: str) -> None:
    options = server_options({"urls": lcp_server, "api_key": API_KEY})
    with _client() as client:
        protocol = describe_server(client, lcp_server, options).protocol
        request = _request(prompt_text="hello", max_tokens=3, stop=())
        path, body = protocol.completion_body(request, slot=None, stream=False)
        reply = client.post(lcp_server + path, json=body)
    chunk = protocol.parse_event(reply.json())
    assert chunk.finish_reason is FinishReason.LENGTH
    # the server adds BOS to "hello": the tiny vocabulary spells it in 5 tokens
    assert chunk.usage is not None and chunk.usage.completion_tokens == 3
    assert chunk.usage.prompt_tokens >= 2


def test_llama_cpp_python_server_wrong_key_says_check_api_key(lcp_server: str) -> None:
    options = server_options({"urls": lcp_server, "api_key": "wrong"})
    with _client("wrong") as client, pytest.raises(ServerResponseError) as caught:
        describe_server(client, lcp_server, options)
    assert caught.value.status == 401 and "check api_key" in str(caught.value)
    assert "wrong" not in str(caught.value)  # the key itself is never shown


def test_llama_cpp_python_server_refuses_token_prompts_with_a_500(lcp_server: str) -> None:
    """Why OpenAIProtocol sends text to this server: a token-id prompt is a 500 (verified)."""
    with _client() as client:
        reply = client.post(
            lcp_server + "/v1/completions", json={"prompt": [1, 372, 285], "max_tokens": 1}
        )
    assert reply.status_code == 500 and "valid string" in error_detail(reply.content)
    assert not is_retryable_status(reply.status_code)


# -- a real llama-server, where one is built ----------------------------------------------
def _llama_server_binary() -> str | None:
    path = os.environ.get("SERAPEUM_LLAMA_SERVER")
    return path if path and os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def llama_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _llama_server_binary()
    if binary is None:
        pytest.skip(
            "no llama-server: build it with scripts/build-llama-server.sh and set SERAPEUM_LLAMA_SERVER"
        )
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        binary, "-m", str(tiny_model_path), "--host", "127.0.0.1", "--port", str(port),
        "-c", "1024", "-np", "2", "-t", "1", "--api-key", API_KEY,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, f"{url}/health", log, {})
        yield url
    finally:
        _stop(process)


def test_llama_server_round_trip(llama_server: str) -> None:
    options = server_options({"urls": llama_server, "api_key": API_KEY})
    with _client() as client:
        described: ServerDescription = describe_server(client, llama_server, options)
        protocol = described.protocol
        assert isinstance(protocol, LlamaServerProtocol)
        assert described.slots == 2 and described.n_ctx == 512  # 1024 shared by 2 slots
        assert (described.bos_token, described.bos_id, described.adds_bos) == ("<s>", 1, True)
        check_health(client, described)
        _, body = protocol.tokenize_body("hello world")
        tokens = protocol.parse_tokens(client.post(llama_server + "/tokenize", json=body).json())
        assert tokens and tokens[0] != 1  # no BOS added
        prompt = (1, *tokens)
        request = _request(
            prompt_tokens=prompt, max_tokens=5, stop=(), options={"seed": 1, "logprobs": 2}
        )
        path, body = protocol.completion_body(request, slot=1, stream=True)
        chunks = _stream(client, llama_server, path, body, protocol)
        again = _stream(client, llama_server, path, body, protocol)
    final = chunks[-1]
    assert final.finish_reason is FinishReason.LENGTH and final.slot == 1
    assert final.usage is not None and final.usage.prompt_tokens == len(prompt)
    assert final.usage.completion_tokens == 5
    assert final.timing is not None and final.timing.generation_seconds > 0
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    # the same prompt on the same slot: all but the last prompt token come from the cache
    assert again[-1].usage is not None and again[-1].usage.cached_prompt_tokens == len(prompt) - 1
