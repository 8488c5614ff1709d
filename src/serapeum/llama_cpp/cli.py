"""The ``serapeum-llama-cpp`` command (``python -m serapeum.llama_cpp``).

``download MODEL`` fetches a model into the cache and prints its local path, so a model can
be fetched while online and used offline later. MODEL is a local path, an http(s) URL, or
``hf:ORG/REPO/FILE`` (FILE may be a glob such as ``*Q4_K_M.gguf``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest, get_plugin_host
from serapeum.llama_cpp.gguf_file import require_gguf
from serapeum.llama_cpp.sources import build_model_request, resolve_model

EXIT_FAILED, EXIT_USAGE = 1, 2


def model_request(
    model: str, *, revision: str | None, sha256: str | None, quiet: bool
) -> ModelRequest:
    """Turn the command line's MODEL into the request the engine would build."""
    options = {"sha256": sha256, "progress": not quiet}
    if model.startswith("hf:"):
        parts = model.removeprefix("hf:").strip("/").split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(
                f"{model!r}: write Hugging Face models as hf:ORG/REPO/FILE, e.g. "
                "hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf"
            )
        return build_model_request(
            model_path=None,
            model_url=None,
            hf_model_id=f"{parts[0]}/{parts[1]}",
            hf_filename=parts[2],
            hf_revision=revision,
            options=options,
        )
    if revision is not None:
        raise ConfigurationError("--revision applies to hf: models only")
    is_url = "://" in model and not model.startswith("file:")
    return build_model_request(
        model_path=None if is_url else model,
        model_url=model if is_url else None,
        hf_model_id=None,
        hf_filename=None,
        options=options,
    )


def _download(args: argparse.Namespace) -> int:
    request = model_request(
        args.model, revision=args.revision, sha256=args.sha256, quiet=args.quiet
    )
    path = resolve_model(request, get_plugin_host())
    require_gguf(path)
    print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serapeum-llama-cpp", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser(
        "download",
        help="fetch a model into the cache and print its path",
        description="Fetch a model into the cache (or find it there) and print its local path.",
    )
    download.add_argument(
        "model", metavar="MODEL", help="a path, an http(s) URL, or hf:ORG/REPO/FILE"
    )
    download.add_argument("--sha256", help="the expected SHA-256 of the file")
    download.add_argument("--revision", help="branch, tag or commit (hf: models)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigurationError, SerapeumError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"serapeum-llama-cpp: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ConfigurationError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
