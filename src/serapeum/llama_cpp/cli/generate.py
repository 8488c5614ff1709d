"""What ``complete``, ``chat`` and ``serve`` share: the model, the options, the output.

The generation options come from the flags and ``-o KEY VALUE`` in command-line order (the
last one wins; ``--stop`` adds); the answer streams to stdout, is printed whole
(``--no-stream``) or as one JSON object (``--json``) with its usage and timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serapeum.llama_cpp.cli.inputs import read_text_file
from serapeum.llama_cpp.cli.models import default_model_path, model_fields
from serapeum.llama_cpp.cli.options import read_json
from serapeum.llama_cpp.cli.output import out
from serapeum.llama_cpp.errors import SchemaError

__all__ = [
    "answer_record",
    "build_llm",
    "call_options",
    "model_label",
    "print_answer",
    "schema_errors_named",
]

# LlamaCPP's own fields among the generation options (the rest go to generate_kwargs)
_FIELDS = ("temperature", "max_new_tokens", "stop")


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """Per-call options: the flags and ``-o`` (in order), then ``--json-schema FILE``."""
    options: dict[str, Any] = dict(getattr(args, "options", None) or {})
    schema_file = getattr(args, "json_schema", None)
    if schema_file is not None:
        what = f"--json-schema {schema_file}"
        options["json_schema"] = read_json(read_text_file(schema_file, what), what)
    return options


@contextlib.contextmanager
def schema_errors_named(args: argparse.Namespace) -> Iterator[None]:
    """Name ``--json-schema FILE`` in a schema error the engine raises for it."""
    schema_file = getattr(args, "json_schema", None)
    try:
        yield
    except SchemaError as exc:
        if schema_file is None:
            raise
        raise SchemaError(f"--json-schema {schema_file}: {exc}") from exc


def build_llm(
    args: argparse.Namespace, default_alias: str, defaults: dict[str, Any] | None = None
) -> Any:
    """The ``LlamaCPP`` the command line describes; ``defaults``: generation options that
    become the instance's own settings (``serve``), instead of being passed per call."""
    from serapeum.llama_cpp.llm import LlamaCPP

    fields: dict[str, Any]
    if args.model is None:
        fields = {"model_path": default_model_path(default_alias)}
    else:
        fields = model_fields(args.model)
    settings: dict[str, Any] = {
        "context_window": args.ctx,
        "n_gpu_layers": args.n_gpu_layers,
        "system_prompt": getattr(args, "system", None),
        "formatter": args.formatter,
        "verbose": args.debug,
        "n_parallel": getattr(args, "n_parallel", None),
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if defaults:
        settings.update({k: v for k, v in defaults.items() if k in _FIELDS})
        extra = {k: v for k, v in defaults.items() if k not in _FIELDS}
        if extra:
            settings["generate_kwargs"] = extra
    return LlamaCPP(**fields, **settings)


def model_label(llm: Any) -> str:
    """The model's file name, as ``--json`` reports it."""
    return Path(str(llm.model_path or llm.metadata.model_name)).name


def print_answer(chunks: Iterator[Any], *, stream: bool, as_json: bool, model: str) -> str:
    """Print the answer from a stream of chunks; return its text.

    Streaming writes each delta as it comes; ``--no-stream`` the whole text at the end;
    ``--json`` one object: model, text, finish_reason, usage and timing.
    """
    text, last = "", None
    try:
        for chunk in chunks:
            delta = chunk.delta or ""
            text += delta
            last = chunk
            if stream and not as_json:
                out(delta, end="")
    finally:  # a closed pipe or Ctrl-C ends the generation now, freeing the model
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if as_json:
        out(json.dumps(answer_record(text, last, model), ensure_ascii=False))
    elif stream:
        out()
    else:
        out(text)
    return text


def answer_record(text: str, last: Any, model: str) -> dict[str, Any]:
    """The ``--json`` object for an answer whose last chunk is ``last``."""
    usage = getattr(last, "usage", None)
    timing = getattr(last, "timing", None)
    reason = getattr(last, "finish_reason", None)
    return {
        "model": model,
        "text": text,
        "finish_reason": None if reason is None else str(reason),
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
        },
        "timing": None
        if timing is None
        else {
            "time_to_first_token": timing.time_to_first_token,
            "prompt_seconds": timing.prompt_seconds,
            "generation_seconds": timing.generation_seconds,
            "tokens_per_second": timing.tokens_per_second,
        },
    }
