"""The seed's usage patterns through ``LlamaCPP(server_urls=...)`` against real servers.

On the tiny model the answers are gibberish, so the server backend's answers are compared
with the in-process engine's on the same file (greedy decoding gives the same tokens);
on Gemma 3 270M they must also make sense.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from serapeum.core.cancellation import CancelToken
from serapeum.core.llms import FinishReason, Message, MessageRole, TextCompletionLLM
from serapeum.core.output_parsers import PydanticParser
from serapeum.llama_cpp import LlamaCPP, MissingFormatterError
from serapeum.llama_cpp.testing.tiny_model import TinyModelSpec, build_tiny_gguf
from serapeum_backend_server import ServerResponseError
from serapeum_backend_server.testing import (
    RunningServer,
    llama_server_binary,
    start_llama_cpp_python_server,
    start_llama_server,
)

from .conftest import ServerFactory


@pytest.fixture(scope="module")
def remote(tiny_pair: list[RunningServer]) -> LlamaCPP:
    return LlamaCPP(
        server_urls=[server.url for server in tiny_pair],
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=12,
        context_window=1024,
    )


@pytest.fixture(scope="module")
def local(tiny_model_path: Path) -> LlamaCPP:
    return LlamaCPP(
        model_path=str(tiny_model_path),
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=12,
        context_window=1024,
    )


def test_complete_matches_the_in_process_engine(remote: LlamaCPP, local: LlamaCPP) -> None:
    answer = remote.complete("Hello there")
    assert answer.text == local.complete("Hello there").text
    assert answer.finish_reason is FinishReason.LENGTH
    assert answer.usage is not None and answer.usage.completion_tokens == 12
    assert answer.usage.prompt_tokens == local.count_tokens(local.format_completion("Hello there"))
    assert answer.timing is not None and answer.timing.time_to_first_token > 0


def test_the_servers_tokenizer_counts_like_the_engine(remote: LlamaCPP, local: LlamaCPP) -> None:
    prompt = local.format_messages([Message.system("Be brief."), Message.user("Hi")])
    assert remote.tokenize(prompt) == local.tokenize(prompt)
    assert remote.tokenize(prompt).count(1) == 1  # BOS exactly once, though the text has <s>


def test_chat_with_a_system_message(remote: LlamaCPP, local: LlamaCPP) -> None:
    messages = [Message.system("Be brief."), Message.user("Say hello.")]
    answer = remote.chat(messages)
    assert answer.message.role is MessageRole.ASSISTANT
    assert answer.message.content == local.chat(messages).message.content


def test_multi_turn(remote: LlamaCPP, server_kind: str) -> None:
    """Each turn sends the whole history; on llama-server the slot already holds its prefix.

    (The in-process engine keeps the generated token ids of earlier answers while a server
    re-tokenizes their text, so from turn 2 the two may differ: not compared here.)
    """
    history = [Message.system("Be brief."), Message.user("one")]
    for turn in ("two", "three", "four"):
        answer = remote.chat(history)
        assert answer.message.content
        history += [answer.message, Message.user(turn)]
    final = remote.complete(remote.format_messages(history), formatted=True)
    assert final.usage is not None
    assert final.usage.prompt_tokens == remote.count_tokens(remote.format_messages(history))
    if server_kind == "llama-server":  # affinity: most of the prompt was already evaluated
        assert final.usage.cached_prompt_tokens > final.usage.prompt_tokens // 2


def test_streaming_equals_the_whole_answer(remote: LlamaCPP) -> None:
    chunks = list(remote.complete("Count with me", stream=True))
    assert "".join(c.delta for c in chunks) == remote.complete("Count with me").text
    assert chunks[-1].text == remote.complete("Count with me").text
    assert chunks[-1].finish_reason is FinishReason.LENGTH and chunks[-1].usage is not None


def test_stop_sequences(remote: LlamaCPP, local: LlamaCPP) -> None:
    whole = local.complete("Hello there", max_new_tokens=24).text
    stop = whole.strip()[3:6]
    answer = remote.complete("Hello there", max_new_tokens=24, stop=[stop])
    assert stop not in answer.text
    assert answer.text == local.complete("Hello there", max_new_tokens=24, stop=[stop]).text
    assert answer.finish_reason is FinishReason.STOP


def test_async_and_a_concurrent_gather(
    remote: LlamaCPP, local: LlamaCPP, tiny_pair: list[RunningServer]
) -> None:
    prompts = [f"Question {i}" for i in range(6)]

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def run() -> list[Any]:
        beat = asyncio.create_task(ticker())
        answers = await asyncio.gather(*(remote.acomplete(p) for p in prompts))
        beat.cancel()
        return answers

    answers = asyncio.run(run())
    assert [a.text for a in answers] == [local.complete(p).text for p in prompts]
    assert {a.raw["server"] for a in answers} == {s.url for s in tiny_pair}  # both served
    assert ticks > 3  # the event loop ran while the servers generated


def test_async_stream(remote: LlamaCPP) -> None:
    async def run() -> str:
        stream = await remote.acomplete("Hello there", stream=True)
        return "".join([chunk.delta async for chunk in stream])

    assert asyncio.run(run()) == remote.complete("Hello there").text


def test_cancel_stops_and_says_so(remote: LlamaCPP) -> None:
    cancel = CancelToken()
    stream = remote.complete("Hello there", stream=True, cancel=cancel, max_new_tokens=200)
    first = next(stream)
    cancel.set()
    rest = list(stream)
    assert rest[-1].finish_reason is FinishReason.CANCELLED
    assert len(first.text + "".join(c.delta for c in rest)) < len(
        remote.complete("Hello there", max_new_tokens=200).text
    )


def test_breaking_out_of_a_stream_frees_the_server(remote: LlamaCPP) -> None:
    for chunk in remote.complete("Hello there", stream=True, max_new_tokens=300):
        if chunk.delta:
            break
    # The server stopped that generation: the next request is answered as usual.
    assert remote.complete("Hello there").text


class Pick(BaseModel):
    value: str


def test_json_schema_constrains_on_the_server(remote: LlamaCPP) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = remote.complete("A number:", json_schema=schema, max_new_tokens=48)
    assert isinstance(json.loads(answer.text)["n"], int)


@pytest.fixture(scope="module")
def gemma(start_server: ServerFactory, gemma_model_path: Path) -> LlamaCPP:
    server = start_server(gemma_model_path, n_ctx=1024)
    return LlamaCPP(server_urls=[server.url], formatter="gemma", temperature=0.0, max_new_tokens=12)


@pytest.mark.e2e
def test_gemma_makes_sense_through_a_server(gemma: LlamaCPP) -> None:
    assert gemma.complete("1, 2, 3, 4, 5,", formatted=True).text.lstrip().startswith("6")
    text = gemma.complete(
        "Q: What is the capital of France?\nA:", formatted=True, max_new_tokens=24
    ).text
    assert "Paris" in text, text
    chat = gemma.chat([Message.system("Be brief."), Message.user("Say hello.")])
    assert "<end_of_turn>" not in chat.message.content


@pytest.mark.e2e
def test_structured_output_through_text_completion_llm(gemma: LlamaCPP) -> None:
    """The seed's snippet: the schema is constrained on the server, so the answer parses."""
    assert gemma.supports_json_schema
    text_llm = TextCompletionLLM(
        output_parser=PydanticParser(output_cls=Pick),
        prompt="Generate any value: {value}",
        llm=gemma,
    )
    assert isinstance(text_llm(value="input", llm_kwargs={"max_new_tokens": 128}), Pick)


def test_the_prompt_format_is_detected_from_the_servers_template(
    start_server: ServerFactory, server_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """llama-server's /props gives the GGUF's chat template; llama-cpp-python's server cannot."""
    template = "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"
    path = build_tiny_gguf(
        tmp_path_factory.mktemp("templated") / "tiny.gguf",
        TinyModelSpec(chat_template=template, name="tiny-templated"),
    )
    server = start_server(path, n_ctx=512)
    if server_kind == "llama-cpp-python":
        with pytest.raises(MissingFormatterError, match="formatter="):
            LlamaCPP(server_urls=[server.url])
        return
    llm = LlamaCPP(server_urls=[server.url], temperature=0.0, max_new_tokens=8)
    assert "chat template" in llm.formatter_reason
    assert llm.format_messages([Message.user("Hi")]) == "[INST] Hi [/INST]"
    assert llm.chat([Message.user("Hi")]).message.content is not None


def test_llama_servers_chatml_fallback_is_not_taken_for_the_models_format(
    start_server: ServerFactory, gemma_model_path: Path
) -> None:
    """Gemma 3 270M (base) has no template: llama-server reports ChatML, which is refused."""
    server = start_server(gemma_model_path, n_ctx=512)
    with pytest.raises(MissingFormatterError, match="formatter="):
        LlamaCPP(server_urls=[server.url])


def test_api_key(tiny_model_path: Path, server_kind: str) -> None:
    """A server that wants a key gets it as a bearer token; a wrong key says so."""
    if server_kind == "llama-server":
        binary = llama_server_binary()
        assert binary is not None
        server = start_llama_server(binary, tiny_model_path, n_ctx=512, api_key="sesame")
    else:
        server = start_llama_cpp_python_server(tiny_model_path, n_ctx=512, api_key="sesame")
    with server:
        llm = LlamaCPP(server_urls=[server.url], api_key="sesame", formatter="llama2")
        assert llm.complete("Hello", max_new_tokens=4).text
        with pytest.raises(ServerResponseError, match="check api_key") as caught:
            LlamaCPP(server_urls=[server.url], api_key="wrong", formatter="llama2")
        assert "wrong" not in str(caught.value)


@pytest.mark.e2e
def test_a_request_does_not_wait_behind_another_servers_generation(
    start_server: ServerFactory, gemma_model_path: Path
) -> None:
    """llama-cpp-python's server tokenizes under its generation lock: ask the idle one."""
    servers = [start_server(gemma_model_path, n_ctx=512) for _ in range(2)]
    llm = LlamaCPP(server_urls=[s.url for s in servers], formatter="gemma", temperature=0.0)
    started = threading.Event()

    def long_answer() -> None:
        for _chunk in llm.complete("1, 2, 3,", formatted=True, stream=True, max_new_tokens=150):
            started.set()

    worker = threading.Thread(target=long_answer)
    worker.start()
    assert started.wait(120)
    assert llm.complete("Hello", max_new_tokens=2).text is not None
    still_running = worker.is_alive()
    worker.join(300)
    assert still_running  # answered while the other server was still generating
