"""The frozen descriptors that plugins hand to the host from their registration hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from serapeum.core.plugins.backend_api import LoadedModel
from serapeum.core.plugins.model_info import ModelInfo, names, read_only
from serapeum.core.redact import redact_url

if TYPE_CHECKING:
    from serapeum.core.llms.types import Message

__all__ = ["BackendSpec", "ModelRequest", "ModelSource", "PromptFormatter"]


def _redacted(url: str | None) -> str:
    return repr(None if url is None else redact_url(url))


def _non_empty(_instance: object, attribute: Any, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


@frozen
class PromptFormatter:
    """How one model family wants its prompts written.

    ``messages_to_prompt(messages, system_prompt=None)`` renders a conversation ending
    where the assistant speaks next; ``completion_to_prompt(completion,
    system_prompt=None)`` renders a single instruction. ``stop`` lists the family's
    end-of-turn markers; ``prompt_starts_with_bos`` says the rendered text already
    begins with the BOS token's text (the engine then keeps exactly one BOS).
    """

    name: str = field(validator=_non_empty)
    messages_to_prompt: Callable[..., str]
    completion_to_prompt: Callable[..., str]
    aliases: tuple[str, ...] = field(default=(), converter=names)
    stop: tuple[str, ...] = field(default=(), converter=names)
    prompt_starts_with_bos: bool = False
    description: str = ""
    detect: Callable[[ModelInfo], bool] | None = field(default=None, eq=False)
    """Recognise a model this format is for, from its ``ModelInfo`` (the detection hook)."""

    def render_messages(self, messages: Sequence[Message], system_prompt: str | None = None) -> str:
        return self.messages_to_prompt(messages, system_prompt=system_prompt)

    def render_completion(self, completion: str, system_prompt: str | None = None) -> str:
        return self.completion_to_prompt(completion, system_prompt=system_prompt)


@frozen
class ModelRequest:
    """What the user asked to load; a model source turns it into a local GGUF path.

    Exactly one of ``model_path``, ``model_url`` and ``hf_model_id`` is set.
    ``options`` carries source-specific settings (for example a checksum).

    ``verify(path)`` is the engine's check of a model file (its GGUF structure and, for a
    file seen for the first time, a checked load in a child process). A source that
    installs files in a cache calls it on the complete download *before* installing it,
    so a cache never holds a file that cannot load; it raises (a ``SerapeumError``) to
    refuse the file. Sources that only point at existing files need not call it: the
    engine checks what they return.
    """

    model_path: str | None = None
    model_url: str | None = field(default=None, repr=_redacted)
    hf_model_id: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    options: Mapping[str, Any] = field(factory=dict, converter=read_only, eq=False)
    verify: Callable[[Path], None] | None = field(default=None, eq=False, repr=False)

    def verify_file(self, path: Path) -> None:
        """Run the engine's check on ``path`` (nothing when the request carries none)."""
        if self.verify is not None:
            self.verify(path)

    @property
    def kind(self) -> str:
        """``"path"``, ``"url"`` or ``"hf"``: which of the three inputs is set."""
        if self.hf_model_id is not None:
            return "hf"
        if self.model_url is not None:
            return "url"
        return "path"

    def describe(self) -> str:
        if self.hf_model_id is not None:
            return f"hf_model_id={self.hf_model_id!r}, hf_filename={self.hf_filename!r}"
        if self.model_url is not None:
            return f"model_url={redact_url(self.model_url)!r}"
        return f"model_path={self.model_path!r}"


@frozen
class ModelSource:
    """A way to obtain a GGUF file: local paths, URLs, the Hugging Face Hub, ...

    The host asks sources in order of descending ``priority`` (built-in sources use
    0), and the first whose ``handles(request)`` is true resolves it, so a
    third-party source with a higher priority takes precedence for what it claims.
    """

    name: str = field(validator=_non_empty)
    handles: Callable[[ModelRequest], bool]
    resolve: Callable[[ModelRequest], Path]
    priority: int = 0
    description: str = ""
    aliases: tuple[str, ...] = field(default=(), converter=names)


@frozen
class BackendSpec:
    """A named way to run models.

    ``load(path, options)`` is called once per distinct (path, options) in a process, on
    the thread that constructs the first ``LlamaCPP`` needing it; it returns a
    ``LoadedModel`` or raises a ``SerapeumError`` (``ConfigurationError`` for options it
    refuses, a load error otherwise). ``path`` is the resolved local GGUF file, or None for
    a backend with ``needs_model_file=False`` (a remote server holds the model).
    ``options`` are the engine's settings (``n_ctx``, ``verbose``...) merged with the
    caller's ``model_kwargs``; ``check_load_options``, when given, validates and normalises them
    at construction, before any file is resolved or loaded.
    """

    name: str = field(validator=_non_empty)
    load: Callable[[Path | None, Mapping[str, Any]], LoadedModel]
    aliases: tuple[str, ...] = field(default=(), converter=names)
    description: str = ""
    needs_model_file: bool = True
    check_load_options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = field(
        default=None, eq=False
    )
