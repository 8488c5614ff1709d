"""What each subcommand does, given the parsed command line; each returns its exit status."""

from __future__ import annotations

import argparse
from pathlib import Path

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message
from serapeum.core.plugins import get_plugin_host
from serapeum.llama_cpp.cache_dir import cache_dir
from serapeum.llama_cpp.cli import caches
from serapeum.llama_cpp.cli.aliases import (
    BUILTIN_ALIASES,
    CHAT_ALIAS,
    COMPLETE_ALIAS,
    remove_user_alias,
    set_user_alias,
    user_aliases,
)
from serapeum.llama_cpp.cli.generate import (
    build_llm,
    call_options,
    model_label,
    print_answer,
    schema_errors_named,
)
from serapeum.llama_cpp.cli.inputs import stdin_is_piped, stdin_or_none
from serapeum.llama_cpp.cli.models import model_request
from serapeum.llama_cpp.cli.output import PROG, UsageError, out
from serapeum.llama_cpp.gguf_file import verify_model_file
from serapeum.llama_cpp.sources import resolve_model

__all__ = [
    "aliases",
    "chat",
    "complete",
    "download",
    "formatters",
    "models",
    "plugins",
    "serve",
]

DEFAULTS = {COMPLETE_ALIAS: "complete", CHAT_ALIAS: "chat and serve"}


def complete(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else stdin_or_none()
    if prompt is not None:
        prompt = prompt.strip()
    if not prompt:
        raise ConfigurationError("give a PROMPT, or pipe one on standard input")
    options = call_options(args)
    llm = build_llm(args, COMPLETE_ALIAS)
    with schema_errors_named(args):
        chunks = llm.complete(prompt, formatted=_as_written(args), stream=True, **options)
    print_answer(chunks, stream=not args.no_stream, as_json=args.json, model=model_label(llm))
    return 0


def _as_written(args: argparse.Namespace) -> bool:
    """``--raw``, or a base model named by its alias: wrapped in a chat turn, a prompt only
    confuses a model that was never taught the turns."""
    alias = BUILTIN_ALIASES.get(args.model or COMPLETE_ALIAS)
    return bool(args.raw) or (alias is not None and alias.base_model)


def chat(args: argparse.Namespace) -> int:
    piped = stdin_is_piped()
    if piped and args.conversation is not None:
        raise UsageError("--continue needs the interactive chat: run it in a terminal")
    if not piped and args.json:
        raise UsageError("--json applies to a one-shot chat: pipe the question on standard input")
    question = (stdin_or_none() or "").strip() if piped else None
    if question == "":
        raise ConfigurationError("nothing to answer: standard input was empty")
    options = call_options(args)
    if question is not None:  # one-shot: the whole input is one message
        llm = build_llm(args, CHAT_ALIAS)
        with schema_errors_named(args):
            chunks = llm.chat([Message.user(question)], stream=True, **options)
        print_answer(chunks, stream=not args.no_stream, as_json=args.json, model=model_label(llm))
        return 0
    from serapeum.llama_cpp.cli.repl import run_repl  # readline and signals: only for this

    system, args.system = args.system, None  # the REPL sends it (and /system changes it)
    llm = build_llm(args, CHAT_ALIAS)
    conversation = None if args.conversation is None else Path(args.conversation)
    return int(run_repl(llm, options, system=system, conversation=conversation))


def serve(args: argparse.Namespace) -> int:
    from serapeum.llama_cpp.serve import run_server

    options = call_options(args)
    llm = build_llm(args, CHAT_ALIAS, defaults=options)
    model = args.model if args.model is not None else CHAT_ALIAS
    model_id = model if model in BUILTIN_ALIASES or model in user_aliases() else None
    run_server(
        llm,
        host=args.host,
        port=args.port,
        model_id=model_id,
        log_level="debug" if args.debug else "warning",
    )
    return 0


def download(args: argparse.Namespace) -> int:
    request = model_request(
        args.model, revision=args.revision, sha256=args.sha256, quiet=args.quiet
    )
    path = resolve_model(request, get_plugin_host())
    verify_model_file(path)  # a local file or an old cache entry: checked like a new one
    out(str(path))
    return 0


def plugins(args: argparse.Namespace) -> int:
    host = get_plugin_host()
    registered: dict[str, list[str]] = {}
    for kind, entries in (
        ("formatter", list(host.formatters)),
        ("source", host.sources),
        ("backend", list(host.backends)),
    ):
        for entry in entries:
            registered.setdefault(entry.plugin, []).append(f"{kind} {entry.item.name}")
    for info in host.plugins():
        what = ", ".join(registered.get(info.name, [])) or "nothing"
        out(f"{info.distribution} {info.version or ''}".rstrip() + f"  [{info.name}]: {what}")
    for skipped in host.skipped:
        out(f"{skipped.distribution}  [{skipped.plugin}]: not loaded ({skipped.reason})")
    for failure in host.failures:
        out(f"{failure.distribution}  [{failure.plugin}]: FAILED: {failure.error}")
    return 0


def formatters(args: argparse.Namespace) -> int:
    for entry in get_plugin_host().formatters:
        item = entry.item
        also = f" (also {', '.join(item.aliases)})" if item.aliases else ""
        detects = "; detects its models" if item.detect is not None else ""
        out(f"{item.name}{also}  from {entry.distribution}{detects}: {item.description}")
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:9.1f} MiB"


def _print_aliases() -> None:
    for name, entry in BUILTIN_ALIASES.items():
        out(f"  {name} (default for {DEFAULTS[name]}): {entry.description}")
    for name, model in user_aliases().items():
        out(f"  {name}: {model}")


def models(args: argparse.Namespace) -> int:
    if args.prune:
        return _prune()
    out("aliases:")
    _print_aliases()
    total = 0
    root = cache_dir() / "models"
    ours = caches.serapeum_models()
    out(f"serapeum cache, {root}:" if ours else f"nothing cached in {root}")
    for file in ours:
        out(f"  {_mib(file.size)}  {file.path}")
        total += file.size
    hub = caches.hf_hub_cache()
    theirs = caches.hf_models()
    out(
        f"Hugging Face cache, {hub}:"
        if theirs
        else f"no GGUF files in the Hugging Face cache {hub}"
    )
    for file in theirs:
        out(f"  {_mib(file.size)}  {file.name}  ({file.path})")
        total += file.size
    demos = caches.demo_packages()
    if demos:
        out("demo model packages (used in place):")
    for package in demos:
        files = "1 file" if package.files == 1 else f"{package.files} files"
        out(f"  {_mib(package.size)}  {package.name} ({files}, {package.location})")
        total += package.size
    partial = caches.leftovers()
    if partial:
        out(f"partial downloads ({PROG} models --prune deletes them):")
    for file in partial:
        out(f"  {_mib(file.size)}  {file.path}")
        total += file.size
    out(f"total: {total / 2**20:.1f} MiB")
    return 0


def _prune() -> int:
    deleted, kept = caches.prune()
    for file in deleted:
        out(f"deleted {file.path} ({file.size / 2**20:.1f} MiB)")
    for file in kept:
        out(f"kept {file.path}: written in the last minute, perhaps still downloading")
    freed = sum(file.size for file in deleted)
    out(f"freed {freed / 2**20:.1f} MiB" if deleted else "no partial downloads to delete")
    return 0


def aliases(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "set":
        stored = set_user_alias(args.name, args.target)
        out(f"{args.name} -> {stored}")
    elif action == "remove":
        removed = remove_user_alias(args.name)
        out(f"removed {args.name} (was {removed})")
    else:
        _print_aliases()
    return 0
