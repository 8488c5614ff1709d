"""The command line's grammar: the subcommands, their options and their help.

Every parser refuses abbreviations (``--json`` is never read as ``--json-schema``) and
reports a bad command line in one line (``UsageError``), like every other user error.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.cli import commands
from serapeum.llama_cpp.cli.aliases import CHAT_ALIAS, COMPLETE_ALIAS
from serapeum.llama_cpp.cli.options import GENERATION_OPTIONS, OptionSpec, option_spec
from serapeum.llama_cpp.cli.output import PROG, UsageError, out

__all__ = ["DESCRIPTION", "EPILOG", "build_parser"]

DESCRIPTION = f"""\
Run GGUF models with llama.cpp: complete a prompt, chat, serve an OpenAI-compatible API.

  complete PROMPT   complete a prompt (read from stdin when PROMPT is left out);
                    default model {COMPLETE_ALIAS}, a base model: it continues text, it
                    does not follow instructions
  chat              chat in the terminal (one answer when stdin is piped); default model
                    {CHAT_ALIAS}, an instruction-tuned chat model
  serve             an OpenAI-compatible HTTP server (/v1/chat/completions ...)
  download MODEL    fetch a model into the cache and print its path
  models            the model files in every cache, with sizes (--prune: partial downloads)
  aliases           model aliases; aliases set NAME MODEL, aliases remove NAME
  plugins           installed plugins: distribution, version, what they register, problems
  formatters        installed prompt formatters

MODEL (-m) is a local path, an http(s) URL, hf:ORG/REPO/FILE (FILE may be a glob) or an
alias. Generation options (complete, chat, serve): flags such as --temperature and
--max-tokens, or -o KEY VALUE for any of them; "{PROG} complete --help"
lists them all.
"""

EPILOG = """\
exit status:
  0    done
  2    the input is wrong and the same command would fail the same way: an argument or
       option, the text on standard input, a named file (a missing or broken model, a bad
       --json-schema), the model's chat template, a prompt that does not fit --ctx or an
       answer that does not fit --max-tokens
  1    the input looks right but its surroundings failed, so a retry may work: the
       network, loading or running llama.cpp (memory, the GPU), a missing package
  130  interrupted (Ctrl-C)
  141  standard output was closed before the answer ended (| head -c 1)

--debug (before or after the command) adds the traceback and llama.cpp's log to an error.
"""


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations, whose errors are one line (``UsageError``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """argparse's, but leftover arguments are reported by the subcommand that was given
        them: a did-you-mean among its own flags, a hint to quote a prompt of several words."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            child = self._subcommand(parsed)
            if isinstance(child, Parser):
                child.unrecognized(extras, parsed)
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _subcommand(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                child = action.choices.get(getattr(parsed, action.dest, None) or "")
                if child is not None:
                    return self._deepest(child, parsed)
        return None

    @staticmethod
    def _deepest(
        parser: argparse.ArgumentParser, parsed: argparse.Namespace
    ) -> argparse.ArgumentParser:
        for action in parser._actions:  # aliases set ...: the ACTION's own parser
            if isinstance(action, argparse._SubParsersAction):
                child = action.choices.get(getattr(parsed, action.dest, None) or "")
                if child is not None:
                    return Parser._deepest(child, parsed)
        return parser

    def unrecognized(self, extras: Sequence[str], parsed: argparse.Namespace) -> NoReturn:
        """One line for arguments this (sub)command does not take, with what was probably
        meant."""
        flags = [extra for extra in extras if extra.startswith("-") and len(extra) > 1]
        if flags:
            typed = flags[0].split("=", 1)[0]
            known = [name for name in self._option_string_actions if name.startswith("--")]
            close = [name for name in known if name.startswith(typed) and typed.startswith("--")]
            close = close or difflib.get_close_matches(typed, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.error(f"unknown option {typed}{hint}")
        prompt = getattr(parsed, "prompt", None)
        if prompt is not None:
            words = " ".join([prompt, *extras])
            self.error(
                f"unrecognized arguments: {' '.join(extras)}; a prompt of several words goes "
                f"in quotes: {self.prog} {shlex.quote(words)}"
            )
        self.error(f"unrecognized arguments: {' '.join(extras)}")

    def print_help(self, file: Any = None) -> None:
        if file is None:  # argparse would swallow a closed pipe and exit 0
            out(self.format_help(), end="")
        else:
            super().print_help(file)


class _Version(argparse.Action):
    """``--version``: the package's version on stdout (a closed pipe handled like any other)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("serapeum-llama-cpp")
        except PackageNotFoundError:
            number = "unknown (not installed)"
        out(f"{PROG} {number}")
        parser.exit(0)


class _SetOption(argparse.Action):
    """A generation option (a flag or ``-o KEY VALUE``) into ``args.options``, in order."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, spec: OptionSpec | None = None, **kw: Any
    ) -> None:
        self.spec = spec
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            if self.spec is None:  # -o KEY VALUE
                spec = option_spec(values[0])
                value = spec.parse(values[1], f"-o {spec.key}")
            else:
                spec = self.spec
                value = spec.parse(values, option_string or spec.flag)
        except ConfigurationError as exc:
            raise argparse.ArgumentError(None, str(exc)) from None
        options: dict[str, Any] = dict(getattr(namespace, "options", None) or {})
        key = spec.keyword
        if spec.repeatable and key in options:
            value = [*options[key], *value]
        options[key] = value
        namespace.options = options


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def _debug(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show tracebacks and llama.cpp's log",
    )


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return number


def _port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535; got {text!r}")
    return number


def _model_options(parser: argparse.ArgumentParser, default_alias: str) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "-m",
        "--model",
        help=f"path, http(s) URL, hf:ORG/REPO/FILE or alias (default: {default_alias})",
    )
    group.add_argument("--formatter", help="prompt format (default: detected from the model)")
    group.add_argument(
        "--ctx", type=int, metavar="N", help="context window in tokens (default 3900)"
    )
    group.add_argument(
        "--n-gpu-layers",
        type=int,
        metavar="N",
        help="layers to offload to a GPU, -1 for all (default 0)",
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation options",
        _wrap("Any of them as -o KEY VALUE too; keys: " + ", ".join(GENERATION_OPTIONS) + "."),
    )
    for spec in GENERATION_OPTIONS.values():
        if spec.flag:
            group.add_argument(
                spec.flag, action=_SetOption, spec=spec, metavar=spec.metavar, help=spec.help
            )
    group.add_argument(
        "-o",
        "--option",
        nargs=2,
        action=_SetOption,
        metavar=("KEY", "VALUE"),
        help="set any generation option, e.g. -o min_p 0.1 (repeatable)",
    )
    group.add_argument(
        "--json-schema", metavar="FILE", help="answer with JSON matching this JSON Schema"
    )


def _answer_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--no-stream", action="store_true", help="print the answer when it is complete"
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: model, text, finish_reason, usage, timing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    _debug(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
        child: argparse.ArgumentParser = sub.add_parser(
            name, help=summary, description=_wrap(description or summary), epilog=EPILOG
        )
        _debug(child, suppress=True)  # --debug after the command too
        return child

    complete = command(
        "complete",
        "complete a prompt",
        f"Complete PROMPT (or standard input) and stream the answer. The default model, "
        f"{COMPLETE_ALIAS} (Gemma 3 270M), is a base model: it continues text rather than "
        f"following instructions; use chat (default {CHAT_ALIAS}) to ask questions.",
    )
    complete.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (default: stdin)")
    complete.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as written, not in the model's instruction format "
        f"(always so for a base model's alias, such as {COMPLETE_ALIAS})",
    )
    _model_options(complete, COMPLETE_ALIAS)
    _generation_options(complete)
    _answer_options(complete)
    complete.set_defaults(run=commands.complete)

    chat = command(
        "chat",
        "chat in the terminal",
        f"Chat with a model. In a terminal: an interactive chat (/help lists its commands). "
        f"With standard input piped: one answer to it. Default model: {CHAT_ALIAS} "
        f"(SmolLM2-135M-Instruct, an instruction-tuned chat model).",
    )
    chat.add_argument("-s", "--system", help="system prompt")
    chat.add_argument(
        "--continue",
        dest="conversation",
        metavar="FILE",
        help="continue a conversation saved in the chat with /save FILE",
    )
    _model_options(chat, CHAT_ALIAS)
    _generation_options(chat)
    _answer_options(chat)
    chat.set_defaults(run=commands.chat)

    serve = command(
        "serve",
        "serve an OpenAI-compatible HTTP API",
        f"Serve the model over an OpenAI-compatible HTTP API (/v1/models, /v1/completions, "
        f"/v1/chat/completions). Default model: {CHAT_ALIAS}. Generation options given here "
        f"are the defaults each request may override.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (8080)")
    serve.add_argument(
        "--n-parallel",
        type=_positive,
        metavar="N",
        help="answer N requests at once, in the model's slots (default 1)",
    )
    _model_options(serve, CHAT_ALIAS)
    _generation_options(serve)
    serve.set_defaults(run=commands.serve)

    download = command(
        "download",
        "fetch a model into the cache and print its path",
        "Fetch a model into the cache (or find it there) and print its local path.",
    )
    download.add_argument(
        "model", metavar="MODEL", help="a path, an http(s) URL, hf:ORG/REPO/FILE or an alias"
    )
    download.add_argument("--sha256", help="the expected SHA-256 of the file")
    download.add_argument("--revision", help="branch, tag or commit (hf: models)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=commands.download)

    models = command(
        "models",
        "model files in every cache, with sizes",
        "List the model files in the serapeum cache, the Hugging Face cache and the demo "
        "packages, with their sizes, and partial downloads left behind.",
    )
    models.add_argument(
        "--prune", action="store_true", help="delete the partial downloads and say what it freed"
    )
    models.set_defaults(run=commands.models)

    aliases = command(
        "aliases",
        "model aliases (set, remove)",
        "List the model aliases, built in and your own, or change your own.",
    )
    actions = aliases.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="list the aliases (the default)")
    set_alias = actions.add_parser("set", help="name a model: aliases set NAME MODEL")
    set_alias.add_argument("name", metavar="NAME")
    set_alias.add_argument(
        "target", metavar="MODEL", help="a path (stored absolute), URL, hf:... or built-in alias"
    )
    remove = actions.add_parser("remove", help="forget one of your aliases")
    remove.add_argument("name", metavar="NAME")
    aliases.set_defaults(run=commands.aliases)

    command("plugins", "installed plugins").set_defaults(run=commands.plugins)
    command("formatters", "installed prompt formatters").set_defaults(run=commands.formatters)
    return parser
