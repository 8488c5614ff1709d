"""Llama 2 Chat formatter (seed import path); implemented in ``serapeum-formatters-llama``."""

from serapeum.llama_cpp.formatters._plugin_import import import_formatter_module

_impl = import_formatter_module("serapeum_formatters_llama.llama2", "serapeum-formatters-llama")

BOS = _impl.BOS
EOS = _impl.EOS
B_INST = _impl.B_INST
E_INST = _impl.E_INST
B_SYS = _impl.B_SYS
E_SYS = _impl.E_SYS
LLAMA2 = _impl.LLAMA2
DEFAULT_SYSTEM_PROMPT: str = _impl.DEFAULT_SYSTEM_PROMPT
messages_to_prompt = _impl.messages_to_prompt
completion_to_prompt = _impl.completion_to_prompt

__all__ = [
    "BOS",
    "B_INST",
    "B_SYS",
    "DEFAULT_SYSTEM_PROMPT",
    "EOS",
    "E_INST",
    "E_SYS",
    "LLAMA2",
    "completion_to_prompt",
    "messages_to_prompt",
]
