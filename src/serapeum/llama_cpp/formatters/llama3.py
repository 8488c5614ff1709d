"""Llama 3 Instruct formatter (seed import path); implemented in ``serapeum-formatters-llama``."""

from serapeum.llama_cpp.formatters._plugin_import import import_formatter_module

_impl = import_formatter_module("serapeum_formatters_llama.llama3", "serapeum-formatters-llama")

BOS = _impl.BOS
EOT = _impl.EOT
LLAMA3 = _impl.LLAMA3
DEFAULT_SYSTEM_PROMPT: str = _impl.DEFAULT_SYSTEM_PROMPT
messages_to_prompt_v3_instruct = _impl.messages_to_prompt_v3_instruct
completion_to_prompt_v3_instruct = _impl.completion_to_prompt_v3_instruct

__all__ = [
    "BOS",
    "DEFAULT_SYSTEM_PROMPT",
    "EOT",
    "LLAMA3",
    "completion_to_prompt_v3_instruct",
    "messages_to_prompt_v3_instruct",
]
