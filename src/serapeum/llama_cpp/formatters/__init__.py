"""Seed-compatible import paths for the Llama 2, Llama 3 and Mistral prompt formatters.

The formatters themselves live in plugin distributions (``serapeum-formatters-llama``
and ``serapeum-formatters-mistral``); these modules re-export them so that code
written against the seed keeps working::

    from serapeum.llama_cpp.formatters.llama2 import messages_to_prompt, DEFAULT_SYSTEM_PROMPT

Each submodule says which distribution to install when its plugin is missing.
"""

__all__ = ["llama2", "llama3", "mistral"]
