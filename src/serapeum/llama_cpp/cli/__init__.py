"""The ``serapeum-llama-cpp`` command (also ``python -m serapeum.llama_cpp``).

The modules: ``parser`` (the grammar and help), ``commands`` (what each subcommand does),
``options`` (generation options as ``-o KEY VALUE`` and flags), ``generate`` (the model,
options and answer output shared by complete, chat and serve), ``models`` and ``aliases``
(what ``-m`` accepts), ``caches`` (the model files on disk), ``inputs`` and ``output``
(text in, lines out). ``repl`` is the interactive chat.

Errors and exit status: a serapeum error is one line on stderr,
``serapeum-llama-cpp: error: ...``; 2 for the user's errors (every ``ConfigurationError``,
a bad command line), 1 for the environment's (a download, llama.cpp, a missing package),
130 for Ctrl-C, 141 when stdout was closed. Any other exception is a bug in serapeum and
shows its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from serapeum.core.errors import SerapeumError
from serapeum.llama_cpp.cli.inputs import require_utf8_arguments
from serapeum.llama_cpp.cli.models import model_request
from serapeum.llama_cpp.cli.output import (
    EXIT_CLOSED_OUTPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    USER_ERRORS,
    OutputClosed,
    UsageError,
    out,
    report,
    silence_stdout,
    tolerant_stdout,
)

__all__ = ["main", "model_request"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (see the module docstring)."""
    from serapeum.llama_cpp.cli.parser import build_parser

    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments  # until the command line is parsed
    tolerant_stdout()
    try:
        require_utf8_arguments(arguments)
        args = build_parser().parse_args(arguments)
        debug = args.debug
        status = int(args.run(args))
        out(end="")  # flush now, while a closed pipe can still be handled
        return status
    except OutputClosed:
        silence_stdout()
        return EXIT_CLOSED_OUTPUT
    except UsageError as error:
        report(error, debug=False, translate=False)
        return EXIT_USAGE
    except (SerapeumError, ImportError) as error:
        report(error, debug=debug)
        return EXIT_USAGE if isinstance(error, USER_ERRORS) else EXIT_FAILED
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
