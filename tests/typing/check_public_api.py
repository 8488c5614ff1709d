"""Type-checked by mypy in CI, never run: the public API gives callers precise types."""

from typing import TYPE_CHECKING, assert_type

if TYPE_CHECKING:
    from serapeum.core.llms import ChatResponse, Message
    from serapeum.llama_cpp import LlamaCPP

    llm = LlamaCPP(model_path="model.gguf", formatter="llama2")
    assert_type(llm.chat([Message.user("hi")]), ChatResponse)
    for chunk in llm.chat([Message.user("hi")], stream=True):
        assert_type(chunk, ChatResponse)
    assert_type(llm.complete("hi").text, str)
