"""Type-checked by mypy in CI (never run): the public API gives precise types to callers."""

from typing import assert_type

from serapeum.core.llms import ChatResponse, Message
from serapeum.llama_cpp import LlamaCPP

llm = LlamaCPP(model_path="x.gguf", formatter="llama2")
reply = llm.chat([Message.user("hi")])
assert_type(reply, ChatResponse)
for chunk in llm.chat([Message.user("hi")], stream=True):
    assert_type(chunk, ChatResponse)
text = llm.complete("hi").text
assert_type(text, str)
