"""Mistral Instruct formatter (seed import path); implemented in ``serapeum-formatters-mistral``."""

from serapeum.llama_cpp.formatters._plugin_import import import_formatter_module

_impl = import_formatter_module(
    "serapeum_formatters_mistral.mistral", "serapeum-formatters-mistral"
)

BOS = _impl.BOS
EOS = _impl.EOS
MISTRAL = _impl.MISTRAL
messages_to_prompt = _impl.messages_to_prompt
completion_to_prompt = _impl.completion_to_prompt

__all__ = ["MISTRAL", "completion_to_prompt", "messages_to_prompt"]
