"""What each subcommand does, given the parsed command line; each returns its exit status."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
from serapeum.llama_cpp.cli.conversation_file import (
    SavedConversation,
    load_conversation,
    save_conversation,
)
from serapeum.llama_cpp.cli.generate import (
    build_llm,
    call_options,
    model_label,
    print_answer,
    schema_errors_named,
)
from serapeum.llama_cpp.cli.inputs import stdin_is_piped, stdin_or_none
from serapeum.llama_cpp.cli.models import base_model_alias, model_request
from serapeum.llama_cpp.cli.output import PROG, UsageError, note, out
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
    if not piped and args.json:
        raise UsageError("--json applies to a one-shot chat: pipe the question on standard input")
    conversation = None if args.conversation is None else Path(args.conversation)
    saved = None if conversation is None else load_conversation(conversation)  # before the model
    question = (stdin_or_none() or "").strip() if piped else None
    if question == "":
        raise ConfigurationError("nothing to answer: standard input was empty")
    options = call_options(args)
    _warn_of_a_base_model(args)
    if question is not None:  # one-shot: the whole input is one message
        return _answer_once(args, question, options, conversation, saved)
    from serapeum.llama_cpp.cli.repl import run_repl  # readline and signals: only for this

    system, args.system = args.system, None  # the REPL sends it (and /system changes it)
    llm = build_llm(args, CHAT_ALIAS)
    return int(run_repl(llm, options, system=system, conversation=conversation))


def _answer_once(
    args: argparse.Namespace,
    question: str,
    options: dict[str, Any],
    conversation: Path | None,
    saved: SavedConversation | None,
) -> int:
    """One answer to a piped question; with ``--continue FILE``, after the saved turns (its
    system prompt and options unless the command line gives its own), and both appended to
    FILE, as ``llm -c`` does."""
    history: list[Message] = []
    if saved is not None:
        history = list(saved.messages)
        options = {**saved.options, **options}
        if args.system is None:
            args.system = saved.system
    system, args.system = args.system, None  # sent as the first message, as the REPL does
    start = [Message.system(system)] if system else []
    llm = build_llm(args, CHAT_ALIAS)
    with schema_errors_named(args):
        chunks = llm.chat([*start, *history, Message.user(question)], stream=True, **options)
    answer = print_answer(
        chunks, stream=not args.no_stream, as_json=args.json, model=model_label(llm)
    )
    if conversation is not None:
        turns = [*history, Message.user(question), Message.assistant(answer)]
        save_conversation(
            conversation, turns, system=system, options=options, model=model_label(llm)
        )
    return 0


def _warn_of_a_base_model(args: argparse.Namespace) -> None:
    alias = base_model_alias(args.model, CHAT_ALIAS)
    if alias is not None:
        note(
            f"note: {alias} is a base model: it continues text and does not follow a chat; "
            f"for a chat model use -m {CHAT_ALIAS}"
        )


def serve(args: argparse.Namespace) -> int:
    from serapeum.llama_cpp.serve import bind_socket, run_server

    options = call_options(args)
    _warn_of_a_base_model(args)
    # The port first: a port in use is refused before the user waits for a model to load.
    sock = bind_socket(args.host, args.port)
    try:
        llm = build_llm(args, CHAT_ALIAS, defaults=options)
        model = args.model if args.model is not None else CHAT_ALIAS
        model_id = model if model in BUILTIN_ALIASES or model in user_aliases() else None
        run_server(
            llm,
            host=args.host,
            port=args.port,
            model_id=model_id,
            log_level="debug" if args.debug else "warning",
            sock=sock,
        )
    finally:
        sock.close()
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
    failures: dict[str, list[str]] = {}
    for failure in host.failures:
        failures.setdefault(failure.plugin, []).append(
            f"{failure.distribution}  [{failure.plugin}]: FAILED: {failure.error}"
        )
    for info in host.plugins():
        what = ", ".join(registered.get(info.name, []))
        if what or info.name not in failures:  # a failed plugin's "nothing" says nothing
            name = f"{info.distribution} {info.version or ''}".rstrip()
            out(f"{name}  [{info.name}]: {what or 'nothing'}")
        for line in failures.pop(info.name, []):
            out(line)
    for skipped in host.skipped:
        out(f"{skipped.distribution}  [{skipped.plugin}]: not loaded ({skipped.reason})")
    for lines in failures.values():
        for line in lines:
            out(line)
    return 0


def formatters(args: argparse.Namespace) -> int:
    for entry in get_plugin_host().formatters:
        item = entry.item
        also = f" (also {', '.join(item.aliases)})" if item.aliases else ""
        detects = "; detects its models" if item.detect is not None else ""
        out(f"{item.name}{also}  from {entry.distribution}{detects}: {item.description}")
    return 0


def human_size(size: int) -> str:
    """``512 B``, ``3.2 KiB``, ``118.5 MiB``, ``1.3 GiB``: small files are not ``0.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)):
        if size < scale * 1024 or unit == "GiB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def _sized(size: int) -> str:
    return f"{human_size(size):>10}"


def _print_aliases() -> None:
    for name, entry in BUILTIN_ALIASES.items():
        out(f"  {name} (default for {DEFAULTS[name]}): {entry.description}")
    for name, model in user_aliases().items():
        out(f"  {name}: {model}")


def _alias_of(file: Path) -> str:
    """`` (alias NAME)`` for a built-in alias's own file, which ``-m NAME`` names best."""
    for name, entry in BUILTIN_ALIASES.items():
        if entry.file_name and file.name == entry.file_name:
            return f" (-m {name})"
    return ""


def models(args: argparse.Namespace) -> int:
    if args.prune:
        return _prune()
    total = 0
    root = cache_dir() / "models"
    ours = caches.serapeum_models()
    out(f"serapeum cache, {root}:" if ours else f"nothing cached in {root}")
    for file in ours:
        out(f"  {_sized(file.size)}  {file.path}{_alias_of(file.path)}")
        total += file.size
    hub = caches.hf_hub_cache()
    theirs = caches.hf_models()
    out(
        f"Hugging Face cache, {hub}:"
        if theirs
        else f"no GGUF files in the Hugging Face cache {hub}"
    )
    for file in theirs:
        out(f"  {_sized(file.size)}  {file.name}  ({file.path})")
        total += file.size
    demos = caches.demo_packages()
    if demos:
        out("demo model packages (used in place):")
    for package in demos:
        out(f"  {_sized(package.size)}  {package.name}{_package_place(package)}")
        total += package.size
    partial = caches.leftovers()
    if partial:
        out(f"partial downloads ({PROG} models --prune deletes them):")
    for file in partial:
        out(f"  {_sized(file.size)}  {file.path}")
        total += file.size
    out(f"total: {human_size(total)} ({PROG} aliases lists the names -m takes)")
    return 0


def _package_place(package: caches.DemoPackage) -> str:
    """Where a demo package's model is: its GGUF file, else its files' folder with a count."""
    location = package.location
    if location is None:
        return ""
    if location.suffix == ".gguf":
        return f": {location}{_alias_of(location)}"
    files = "1 file" if package.files == 1 else f"{package.files} files"
    return f": {files} in {location}"


def _prune() -> int:
    deleted, kept = caches.prune()
    for file in deleted:
        out(f"deleted {file.path} ({human_size(file.size)})")
    for file in kept:
        out(f"kept {file.path}: written in the last minute, perhaps still downloading")
    freed = sum(file.size for file in deleted)
    out(f"freed {human_size(freed)}" if deleted else "no partial downloads to delete")
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
