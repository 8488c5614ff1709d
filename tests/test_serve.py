"""The OpenAI-compatible server, driven by the real ``openai`` client over real HTTP.

Each server is uvicorn on 127.0.0.1 in a thread of this process (so a test can look at the
model it serves), on a socket the test binds; the tiny random-weight models keep the protocol
tests fast, and the real SmolLM2 chat model answers the acceptance questions.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import httpx
import httpx2
import jsonschema
import openai
import pytest
import uvicorn

from serapeum.core.errors import SerapeumError
from serapeum.core.llms import Message
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.errors import QueueFullError, ServeAddressError
from serapeum.llama_cpp.serve import create_app, default_model_id, run_server
from serapeum.llama_cpp.serve.failures import failure_for, in_request_words

MODEL_ID = "tiny"
# A guard against a deadlock (a test waiting for a stream that cannot start), not a speed limit.
DEADLOCK_GUARD_SECONDS = 120
# Small socket buffers: a stream whose client stops reading stalls the server within some
# hundred events, instead of the whole answer vanishing into the kernel's buffers.
SMALL_BUFFER = 4096


@contextmanager
def serving(llm: LlamaCPP, model_id: str = MODEL_ID) -> Iterator[str]:
    """Serve ``llm`` with uvicorn in a thread; yields the base URL (``http://.../v1``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)  # inherited by accept()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(llm, model_id=model_id), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLOCK_GUARD_SECONDS
    while not server.started:
        assert thread.is_alive(), "the server thread ended before it started serving"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(DEADLOCK_GUARD_SECONDS)
        sock.close()


def client_for(base_url: str, *, small_buffer: bool = False) -> openai.OpenAI:
    transport = httpx2.HTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)] if small_buffer else []
    )
    return openai.OpenAI(
        base_url=base_url,
        api_key="unused",
        max_retries=0,
        http_client=httpx2.Client(transport=transport, timeout=DEADLOCK_GUARD_SECONDS),
    )


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_path: Path) -> LlamaCPP:
    """One slot, greedy, 4096 tokens of context (long streams for the disconnect test)."""
    return LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=24,
        context_window=4096,
    )


@pytest.fixture(scope="module")
def base_url(tiny_llm: LlamaCPP) -> Iterator[str]:
    with serving(tiny_llm) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with client_for(base_url) as opened:
        yield opened


QUESTION: Any = [{"role": "user", "content": "Hello there"}]


# -- the package without its extra -------------------------------------------------------


def test_the_library_imports_without_the_server_stack_and_says_what_to_install() -> None:
    code = """
import sys
sys.modules["starlette"] = None  # as if not installed: importing it raises ImportError
import serapeum.llama_cpp
import serapeum.llama_cpp.serve as serve
assert "uvicorn" not in sys.modules
try:
    serve.create_app(None, model_id="x")
except ImportError as exc:
    assert isinstance(exc, serve.ServeDependencyError)
    print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'serapeum-llama-cpp[serve]'" in done.stdout
    assert "starlette" in done.stdout


# -- models ---------------------------------------------------------------------------------


def test_models_lists_the_one_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_default_model_id_is_the_file_name(tiny_llm: LlamaCPP, tiny_model_path: Path) -> None:
    assert default_model_id(tiny_llm) == tiny_model_path.name


def test_any_model_name_is_accepted_and_answered_as_the_served_one(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert reply.model == MODEL_ID


# -- answers and usage ------------------------------------------------------------------------


def test_completion_is_the_raw_prompt_completed(client: openai.OpenAI, tiny_llm: LlamaCPP) -> None:
    reply = client.completions.create(model=MODEL_ID, prompt="Once upon a time")
    ours = tiny_llm.complete("Once upon a time", formatted=True)
    choice = reply.choices[0]
    assert choice.text == ours.text
    assert choice.finish_reason == "length"  # the tiny model never says its end token
    assert ours.usage is not None and reply.usage is not None
    assert reply.usage.prompt_tokens == ours.usage.prompt_tokens
    assert reply.usage.completion_tokens == ours.usage.completion_tokens
    assert reply.usage.total_tokens == ours.usage.total_tokens
    assert reply.object == "text_completion"


def test_chat_answer_and_usage_are_the_librarys(client: openai.OpenAI, tiny_llm: LlamaCPP) -> None:
    reply = client.chat.completions.create(model=MODEL_ID, messages=QUESTION)
    ours = tiny_llm.chat([Message.user("Hello there")])
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == ours.message.content
    assert ours.usage is not None and reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        ours.usage.prompt_tokens,
        ours.usage.completion_tokens,
    )
    assert reply.usage.total_tokens == ours.usage.total_tokens


def test_content_parts_are_joined_and_system_messages_kept(
    client: openai.OpenAI, tiny_llm: LlamaCPP
) -> None:
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages)
    ours = tiny_llm.chat([Message.system("Be brief."), Message.user("Hello there")])
    assert reply.choices[0].message.content == ours.message.content


def test_streamed_chat_joins_to_the_whole_answer_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL_ID, messages=QUESTION)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    usage, expected = chunks[-1].usage, whole.usage
    assert chunks[-1].choices == [] and usage is not None and expected is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
        expected.total_tokens,
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_streamed_completion_without_usage_asked(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL_ID, prompt="Once upon a time")
    chunks = list(client.completions.create(model=MODEL_ID, prompt="Once upon a time", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_the_event_stream_is_data_lines_ending_with_done(base_url: str) -> None:
    body = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 3, "stream": True}
    response = httpx.post(f"{base_url}/completions", json=body, timeout=DEADLOCK_GUARD_SECONDS)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    for event in events[:-2]:
        assert event.startswith("data: {") and "\n" not in event
        json.loads(event.removeprefix("data: "))


def test_stop_sequences_end_the_answer_before_them(client: openai.OpenAI) -> None:
    text = client.completions.create(model=MODEL_ID, prompt="Once upon a time").choices[0].text
    stop = text[10:13]
    assert stop.strip(), text  # the tiny model's text has a non-blank piece there
    for given in (stop, [stop, "never in the text"]):
        choice = client.completions.create(model=MODEL_ID, prompt="Once upon a time", stop=given)
        assert choice.choices[0].text == text[: text.index(stop)]
        assert choice.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_ends_with_finish_reason_length(client: openai.OpenAI, field: str) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        **cast(Any, {field: 5}),
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_sampling_options_are_passed_on(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "temperature": 0.9,
        "top_p": 0.5,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    first = client.completions.create(model=MODEL_ID, prompt="Once", **kwargs)
    again = client.completions.create(model=MODEL_ID, prompt="Once", **kwargs)
    assert first.choices[0].text == again.choices[0].text  # the same seed, the same draw


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "rank": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "rank"],
    "additionalProperties": False,
}


CITY_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}


def test_json_schema_response_format_constrains_the_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=200,
        response_format=CITY_FORMAT,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMA)
    streamed = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=200,
        stream=True,
        response_format=CITY_FORMAT,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content


def test_json_object_response_format_gives_an_object(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL_ID,
        prompt="Once",
        max_tokens=200,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(reply.choices[0].text), dict)


# -- errors -----------------------------------------------------------------------------------


def _refused(call: Any, **kwargs: Any) -> dict[str, Any]:
    """The error object of a call that must be answered 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        call(**kwargs)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error" and body["message"]
    return body


def test_a_bad_option_value_is_a_400_with_our_message(client: openai.OpenAI) -> None:
    body = _refused(
        client.chat.completions.create, model=MODEL_ID, messages=QUESTION, temperature=1.5
    )
    assert "temperature must be a number from 0.0 to 1.0" in body["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_unsupported_requests_are_400s_naming_the_field(
    base_url: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL_ID, "messages": QUESTION, **extra}
    response = httpx.post(f"{base_url}/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_a_prompt_longer_than_the_context_is_a_400(client: openai.OpenAI) -> None:
    body = _refused(client.completions.create, model=MODEL_ID, prompt="word " * 5000)
    assert body["code"] == "context_length_exceeded"
    assert "context window is 4096 tokens" in body["message"]


def test_a_body_that_is_not_json_is_a_400_and_an_unknown_path_a_json_404(base_url: str) -> None:
    response = httpx.post(f"{base_url}/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"
    missing = httpx.get(f"{base_url}/engines")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_a_json_answer_cut_short_is_a_400_or_an_error_event(client: openai.OpenAI) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}
    body = _refused(
        client.chat.completions.create,
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=3,
        response_format=response_format,
    )
    assert "before the JSON value was complete" in body["message"]
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=3,
        response_format=response_format,
        stream=True,
    )
    with pytest.raises(openai.APIError, match="before the JSON value was complete"):
        list(stream)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_errors_name_the_request_fields_not_the_librarys_options(
    client: openai.OpenAI, field: str
) -> None:
    """The library says max_new_tokens; the client sent max_tokens (or its newer name)."""
    body = _refused(
        client.chat.completions.create,
        model=MODEL_ID,
        messages=QUESTION,
        response_format=CITY_FORMAT,
        **cast(Any, {field: 3}),
    )
    assert f"({field}=3," in body["message"] and body["message"].endswith(f"raise {field}")
    assert "max_new_tokens" not in body["message"] and body["param"] == field
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        response_format=CITY_FORMAT,
        stream=True,
        **cast(Any, {field: 3}),
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert f"raise {field}" in caught.value.message and "max_new_tokens" not in str(caught.value)


def test_a_schema_error_names_response_format(client: openai.OpenAI) -> None:
    bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    body = _refused(
        client.chat.completions.create, model=MODEL_ID, messages=QUESTION, response_format=bad
    )
    assert body["param"] == "response_format.json_schema.schema"
    assert "json_schema" not in body["message"].replace("response_format.json_schema.schema", "")


def test_library_names_become_request_fields_only_as_whole_words() -> None:
    fields = {"max_new_tokens": "max_tokens", "json_schema": "response_format"}
    message = "raise max_new_tokens; json_schema is bad; my_json_schema and json_schema_x stay"
    assert in_request_words(message, fields) == (
        "raise max_tokens; response_format is bad; my_json_schema and json_schema_x stay"
    )


def test_a_full_queue_is_a_503_with_retry_after_and_a_crash_a_500_that_leaks_nothing() -> None:
    """The mapping alone: a full queue needs slots held at the moment a request arrives,
    which a test cannot arrange without timing, and a 500 needs a bug."""
    busy = failure_for(QueueFullError("all 2 slots are busy and 0 requests wait", queued=0))
    assert busy.status == 503 and busy.headers == {"Retry-After": "1"}
    assert busy.body["error"]["message"] == "all 2 slots are busy and 0 requests wait"
    crash = failure_for(RuntimeError("secret internals at /home/me"))
    assert crash.status == 500 and "secret" not in json.dumps(crash.body)
    assert crash.body["error"]["type"] == "server_error"


# -- concurrency and disconnects ------------------------------------------------------------


@pytest.fixture(scope="module")
def parallel_url(tiny_model_path: Path) -> Iterator[str]:
    llm = LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=2000,
        context_window=4096,
        n_parallel=2,
    )
    with serving(llm) as url:
        yield url


def test_two_slots_serve_two_streaming_clients_at_once(parallel_url: str) -> None:
    """Each client takes its first chunk, then waits for the other's before reading on.

    Two slots answer both at once. A one-slot model cannot pass: its second request waits for
    the first stream to end, which stalls once the small socket buffers are full (2000 tokens
    of events are far more than they hold), so the handshake would never complete.
    """
    got_first = {name: threading.Event() for name in ("a", "b")}
    texts: dict[str, str] = {}
    errors: list[BaseException] = []

    def converse(name: str, other: str) -> None:
        try:
            with client_for(parallel_url, small_buffer=True) as client:
                stream = client.chat.completions.create(
                    model=MODEL_ID,
                    messages=[{"role": "user", "content": f"Tell me about {name}"}],
                    stream=True,
                )
                pieces = []
                for chunk in stream:
                    pieces.append(chunk.choices[0].delta.content or "")
                    if "".join(pieces) and not got_first[name].is_set():
                        got_first[name].set()
                        assert got_first[other].wait(DEADLOCK_GUARD_SECONDS), (
                            f"{other!r} got no chunk while {name!r} was streaming"
                        )
                texts[name] = "".join(pieces)
        except BaseException as exc:
            errors.append(exc)
            got_first[name].set()  # let the other one go on

    threads = [
        threading.Thread(target=converse, args=("a", "b")),
        threading.Thread(target=converse, args=("b", "a")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(texts["a"]) > 1000 and len(texts["b"]) > 1000


def test_a_client_leaving_mid_stream_stops_its_generation(
    client: openai.OpenAI, tiny_llm: LlamaCPP, base_url: str
) -> None:
    prompt = "Once upon a time"
    prompt_tokens = tiny_llm.count_tokens(prompt)
    with client_for(base_url, small_buffer=True) as leaving:
        stream = leaving.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=3500, stream=True
        )
        for index, _chunk in enumerate(stream):
            if index == 2:
                break
        stream.close()  # closes the connection mid-answer
    model = tiny_llm.loaded_model
    deadline = time.monotonic() + DEADLOCK_GUARD_SECONDS
    while model.lock.locked():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.01)
    evaluated = int(model.llama.n_tokens)  # type: ignore[attr-defined]
    # Run to the end, llama.cpp evaluates the prompt and every generated token but the last.
    assert evaluated < prompt_tokens + 3500 - 1  # stopped early, not run to max_tokens
    reply = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_a_client_leaving_a_whole_answer_stops_its_generation(
    client: openai.OpenAI, tiny_llm: LlamaCPP, base_url: str
) -> None:
    """Not streamed: the client times out (and closes its connection) long before 3500 tokens."""
    prompt = "Once upon a time"
    prompt_tokens = tiny_llm.count_tokens(prompt)
    model = tiny_llm.loaded_model
    leaving = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=0.5)
    with leaving, pytest.raises(openai.APITimeoutError):
        leaving.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=3500)
    deadline = time.monotonic() + DEADLOCK_GUARD_SECONDS
    while model.lock.locked():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.01)
    evaluated = int(model.llama.n_tokens)  # type: ignore[attr-defined]
    # Run to the end, llama.cpp evaluates the prompt and every generated token but the last.
    assert prompt_tokens < evaluated < prompt_tokens + 3500 - 1  # started, then stopped early
    reply = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4


# -- the real chat model -------------------------------------------------------------------


def _doc_blocks() -> list[str]:
    """The client examples of docs/serve.md (``python notest``: they need a running server)."""
    text = (Path(__file__).parents[1] / "docs" / "serve.md").read_text()
    blocks = re.findall(r"```python notest\n(.*?)```", text, flags=re.DOTALL)
    return [block for block in blocks if "OpenAI(base_url=" in block]


@pytest.fixture(scope="module")
def chat_url() -> Iterator[str]:
    """``serapeum-llama-cpp serve`` with no ``-m``, as a new user starts it (the docs say so)."""
    port = _free_port()
    command = [sys.executable, "-m", "serapeum.llama_cpp", "serve", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert server.stderr is not None
        lines = _lines(server.stderr)
        while not (line := lines.get(timeout=DEADLOCK_GUARD_SECONDS)).startswith("serving "):
            assert line, "the server ended without serving"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=DEADLOCK_GUARD_SECONDS)


@pytest.mark.e2e_chat
def test_smollm2_answers_paris_whole_and_streamed(chat_url: str) -> None:
    question = "What is the capital of France? Answer with one word."
    with client_for(chat_url) as client:
        model = client.models.list().data[0].id
        messages: Any = [{"role": "user", "content": question}]
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0)
        assert "Paris" in (reply.choices[0].message.content or "")
        stream = client.chat.completions.create(
            model=model, messages=messages, temperature=0, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == reply.choices[0].message.content


@pytest.mark.e2e_chat
def test_the_docs_client_examples_run_against_a_real_server(
    chat_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _doc_blocks()
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block.replace("http://127.0.0.1:8080/v1", chat_url), "serve.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "smollm2-135m-instruct"  # the id the docs promise for the default
    assert "Paris" in printed[1]
    cat = ast.literal_eval(printed[-1])  # the json_schema example's object, complete
    assert set(cat) == {"name", "color", "age"}


@pytest.mark.e2e_chat
def test_the_default_models_id_is_its_alias(chat_url: str) -> None:
    with client_for(chat_url) as client:
        assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("SmolLM2-135M-Instruct.Q4_1.gguf")


# -- the command -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_command(model_path: Path, port: int) -> list[str]:
    command = [sys.executable, "-m", "serapeum.llama_cpp"]
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    if not re.search(r"^\s+serve\b", helped.stdout, flags=re.MULTILINE):
        pytest.skip("the CLI has no serve command yet")
    model = ["-m", str(model_path), "--formatter", "llama2"]
    return [*command, "serve", *model, "--host", "127.0.0.1", "--port", str(port)]


def _lines(stream: IO[bytes]) -> queue.Queue[str]:
    """The stream's lines as they come, read by a thread ("" once it ends)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.decode())
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_the_serve_command_says_serving_once_it_listens_and_answers(
    tiny_model_path: Path,
) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        _serve_command(tiny_model_path, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert server.stderr is not None
        lines = _lines(server.stderr)
        seen: list[str] = []
        while not seen or not seen[-1].startswith("serving "):
            seen.append(lines.get(timeout=DEADLOCK_GUARD_SECONDS))
            assert seen[-1], f"the server ended without serving: {seen}"
        url = f"http://127.0.0.1:{port}/v1"
        assert seen[-1] == f"serving {tiny_model_path.name} at {url} (OpenAI API; Ctrl-C to stop)\n"
        models = httpx.get(f"{url}/models").json()  # at once: the line means it listens
        assert models["data"][0]["id"] == tiny_model_path.name
        with client_for(url) as client:
            reply = client.completions.create(model="any", prompt="Hello", max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens == 3
    finally:
        server.terminate()
        server.wait(timeout=DEADLOCK_GUARD_SECONDS)


@contextmanager
def occupied_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_serve_on_a_port_in_use_is_one_error_line_and_exit_1(tiny_model_path: Path) -> None:
    with occupied_port() as port:
        done = subprocess.run(
            _serve_command(tiny_model_path, port),
            capture_output=True,
            text=True,
            timeout=DEADLOCK_GUARD_SECONDS,
        )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"serapeum-llama-cpp: error: cannot listen on 127.0.0.1:{port}: address already in use; "
        "choose another port (--port) or stop the program listening there"
    ]


def test_serve_checks_the_port_before_the_model(tmp_path: Path) -> None:
    # A model that would be refused (exit 2) is never reached: the port is checked first,
    # so nobody waits for a load to learn that the port is taken.
    with occupied_port() as port:
        done = subprocess.run(
            _serve_command(tmp_path / "missing.gguf", port),
            capture_output=True,
            text=True,
            timeout=DEADLOCK_GUARD_SECONDS,
        )
    assert done.returncode == 1, done.stderr
    assert "address already in use" in done.stderr and "missing.gguf" not in done.stderr


def test_run_server_refuses_a_port_in_use_before_printing_anything(
    tiny_llm: LlamaCPP, capsys: pytest.CaptureFixture[str]
) -> None:
    with occupied_port() as port, pytest.raises(ServeAddressError) as caught:
        run_server(tiny_llm, host="127.0.0.1", port=port)
    error = caught.value
    assert isinstance(error, OSError) and isinstance(error, SerapeumError)
    assert (error.host, error.port, error.errno) == ("127.0.0.1", port, errno.EADDRINUSE)
    assert capsys.readouterr() == ("", "")


def test_a_port_bound_before_loading_is_the_one_served(tiny_model_path: Path) -> None:
    """``bind_socket`` first (a port in use is refused before a slow load), then serve on it."""
    code = f"""
import sys
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.errors import ServeAddressError
from serapeum.llama_cpp.serve import bind_socket, run_server

sock = bind_socket("127.0.0.1", 0)
port = sock.getsockname()[1]
try:
    bind_socket("127.0.0.1", port)  # held, even against another SO_REUSEADDR socket
except ServeAddressError as exc:
    print(port, exc, flush=True)
llm = LlamaCPP(model_path={str(tiny_model_path)!r}, formatter="llama2")
run_server(llm, sock=sock, model_id="bound")
"""
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        said = _lines(server.stdout).get(timeout=DEADLOCK_GUARD_SECONDS)
        port = int(said.split()[0])
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in said
        lines = _lines(server.stderr)
        while not (line := lines.get(timeout=DEADLOCK_GUARD_SECONDS)).startswith("serving "):
            assert line, "the server ended without serving"
        assert f"at http://127.0.0.1:{port}/v1 " in line
        with client_for(f"http://127.0.0.1:{port}/v1") as client:
            assert client.models.list().data[0].id == "bound"
    finally:
        server.terminate()
        server.wait(timeout=DEADLOCK_GUARD_SECONDS)
