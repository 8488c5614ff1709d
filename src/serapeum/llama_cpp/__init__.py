"""serapeum-llama-cpp: local LLM inference on GGUF files through llama-cpp-python.

from serapeum.llama_cpp import LlamaCPP
llm = LlamaCPP(model_path="model.gguf", formatter="llama3")
print(llm.complete("Hello!").text)
"""

from serapeum.llama_cpp.errors import (
    ContextWindowExceededError,
    GenerationCancelled,
    MissingFormatterError,
    ModelBusyError,
    ModelLoadError,
    NotGGUFError,
)
from serapeum.llama_cpp.llm import LlamaCPP

__all__ = [
    "ContextWindowExceededError",
    "GenerationCancelled",
    "LlamaCPP",
    "MissingFormatterError",
    "ModelBusyError",
    "ModelLoadError",
    "NotGGUFError",
]
