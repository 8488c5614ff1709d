"""ChatML prompt formatter (registered as ``chatml``, aliases ``qwen`` and ``openhermes``)."""

from serapeum_formatters_chatml.chatml import CHATML

__all__ = ["CHATML"]
