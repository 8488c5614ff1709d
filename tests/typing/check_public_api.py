"""Type-checked by mypy in CI, never run: the public API gives callers precise types.

``warn-unused-ignores`` turns each ``# type: ignore[...]`` below into an assertion: the
line must be a type error (a misspelled option, a wrong type), or mypy fails.
"""

# mypy: warn-unused-ignores

from typing import TYPE_CHECKING, assert_type

if TYPE_CHECKING:
    from serapeum.core.llms import (
        ChatResponse,
        CompletionResponse,
        GenerationOptions,
        Message,
        TextChunk,
    )
    from serapeum.llama_cpp import LlamaCPP
    from serapeum.llama_cpp.formatters.llama2 import DEFAULT_SYSTEM_PROMPT
    from serapeum.llama_cpp.formatters.llama3 import DEFAULT_SYSTEM_PROMPT as LLAMA3_DEFAULT

    llm = LlamaCPP(model_path="model.gguf", formatter="llama2")
    assert_type(llm.chat([Message.user("hi")]), ChatResponse)
    for chunk in llm.chat([Message.user("hi")], stream=True):
        assert_type(chunk, ChatResponse)
    assert_type(llm.complete("hi").text, str)

    # Code written for the peers: OpenAI-style dicts, the seed's chunks, class_name().
    assert_type(llm.chat([{"role": "user", "content": "hi"}]), ChatResponse)
    assert_type(
        llm.chat([Message.system("Be brief."), {"role": "user", "content": "hi"}]), ChatResponse
    )
    assert_type(Message(role="user", chunks=[TextChunk(content="hi")]).chunks, list[TextChunk])
    assert_type(LlamaCPP.class_name(), str)
    assert_type(DEFAULT_SYSTEM_PROMPT, str)
    assert_type(LLAMA3_DEFAULT, str)

    # Generation options are typed keywords: an IDE lists them, mypy checks them.
    assert_type(
        llm.complete("hi", temperature=0.0, max_new_tokens=8, seed=1, stop=["\n"]).text, str
    )
    assert_type(llm.chat([Message.user("hi")], top_p=0.9, top_k=20, session=None), ChatResponse)
    options: GenerationOptions = {"temperature": 0.2, "max_tokens": 16}
    assert_type(llm.complete("hi", **options).text, str)
    llm.complete("hi", temprature=0.1)  # type: ignore[call-overload]
    llm.chat([Message.user("hi")], max_new_token=8)  # type: ignore[call-overload]
    llm.complete("hi", stream=True, tempreature=0.1)  # type: ignore[call-overload]
    llm.complete("hi", temperature="hot")  # type: ignore[call-overload]
    bad_options: GenerationOptions = {"temprature": 0.2}  # type: ignore[typeddict-unknown-key]

    async def async_calls() -> None:
        assert_type(await llm.acomplete("hi", temperature=0.0), CompletionResponse)
        assert_type(await llm.achat([{"role": "user", "content": "hi"}], seed=3), ChatResponse)
        await llm.achat([Message.user("hi")], temprature=0.1)  # type: ignore[call-overload]
        await llm.acomplete("hi", stream=True, max_new_tokenz=1)  # type: ignore[call-overload]
