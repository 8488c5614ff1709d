"""``LlamaCPP``: complete, chat, stream and await on a local GGUF model."""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import operator
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, Unpack, overload

from attrs import Attribute, define, evolve, field, setters

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import (
    ArgumentTypeError,
    BackendNotInstalledError,
    ConfigurationError,
    UnknownPluginError,
)
from serapeum.core.llms import (
    LLM,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    CompletionToChatMixin,
    GenerationOptions,
    MessageLike,
    Metadata,
    as_messages,
)
from serapeum.core.llms.thread_bridge import Worker, iterate_in_thread, run_in_thread
from serapeum.core.llms.types import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS
from serapeum.core.model_files import require_sha256
from serapeum.core.plugins import (
    BackendChunk,
    BackendSpec,
    GenerationRequest,
    LoadedModel,
    PluginHost,
    PromptFormatter,
    get_plugin_host,
    normalize_name,
)
from serapeum.core.redact import redact_url
from serapeum.core.shown import shown
from serapeum.llama_cpp import reentry
from serapeum.llama_cpp.checked_load import checked_load as load_in_child
from serapeum.llama_cpp.errors import ContextWindowExceededError, MissingFormatterError
from serapeum.llama_cpp.formatting import (
    PromptWriter,
    build_prompt_writer,
    detect_formatter,
    explicit_choice,
)
from serapeum.llama_cpp.gguf_file import require_context_fits, require_gguf, verify_model_file
from serapeum.llama_cpp.load_options import INT32_MAX, MAX_CONTEXT
from serapeum.llama_cpp.model_cache import MODEL_CACHE, cache_key
from serapeum.llama_cpp.sources import build_model_request, resolve_model

DEFAULT_TEMPERATURE = 0.75
logger = logging.getLogger("serapeum.llama_cpp")

# One long-lived worker thread per loaded model runs its async calls (the model's lock
# serialises them anyway); it ends when the model is freed.
_workers: weakref.WeakKeyDictionary[Any, Worker] = weakref.WeakKeyDictionary()
_workers_lock = threading.Lock()


def _worker_for(model: LoadedModel) -> Worker | None:
    """The model's worker thread; None (a thread per call) for a model that runs requests
    concurrently, where one worker would queue what the backend can do at once."""
    if model.capabilities.concurrent:
        return None
    with _workers_lock:
        worker = _workers.get(model)
        if worker is None:
            worker = Worker(name=f"serapeum-worker:{model.name}")
            weakref.finalize(model, worker.stop)
            _workers[model] = worker
        return worker


_SAMPLING_FIELDS = ("temperature", "max_tokens", "stop", "cancel", "session")

# Sessions a batched model keeps by default (n_parallel > 1): in its slots and in RAM
# (within saved_sessions_bytes); they cost nothing until used.
DEFAULT_MAX_SESSIONS = 64
MAX_SESSION_NAME_CHARS = 256


def _check_temperature(value: Any, name: str = "temperature") -> float:
    """A number from 0.0 to 1.0 (numpy's too, not a bool), as a float."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            number = math.nan
        if 0.0 <= number <= 1.0:
            return number
    raise ConfigurationError(f"{name} must be a number from 0.0 to 1.0, got {shown(value)}")


def _check_positive_int(value: Any, name: str) -> int:
    """A positive integer (numpy's too, not a bool), as an int."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = operator.index(value)
        if number > 0:
            return number
    raise ConfigurationError(f"{name} must be a positive integer, got {shown(value)}")


def _check_count(_instance: Any, attribute: Any, value: Any) -> None:
    """None or an integer >= 0 (numpy's too, not a bool)."""
    if value is None:
        return
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if integral and operator.index(value) >= 0:
        return
    raise ConfigurationError(
        f"{attribute.name} must be None or an integer >= 0, got {shown(value)}"
    )


def _check_session(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ArgumentTypeError(
            f"session must be a str naming the conversation (e.g. 'user-42'), got "
            f"{type(value).__name__}"
        )
    if not value or len(value) > MAX_SESSION_NAME_CHARS:
        raise ConfigurationError(
            f"session must be a non-empty name of at most {MAX_SESSION_NAME_CHARS} "
            f"characters, got {shown(value)}"
        )


def _validate(check: Callable[..., Any]) -> Callable[[Any, Any, Any], None]:
    def validator(_instance: Any, attribute: Any, value: Any) -> None:
        check(value, attribute.name)

    return validator


def _check_gpu_layers(_instance: Any, _attribute: Any, value: Any) -> None:
    # A C int: larger values would wrap around (2**32 - 5 becomes -5) on their way to llama.cpp.
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= INT32_MAX:
        raise ConfigurationError(
            f"n_gpu_layers must be an integer >= -1 (-1 offloads every layer) and at most "
            f"{INT32_MAX}, got {shown(value)}"
        )


# The stop-sequence scan after every token compares each stop sequence with the held-back
# text: its cost grows with their number times their length (10,000 stop sequences made
# each token 50 ms slower), so both are bounded, far above what stopping needs.
MAX_STOP_SEQUENCES = 64
MAX_STOP_CHARS = 256


def _stop_list(value: str | Sequence[str] | None) -> list[str]:
    """Stop sequences as a list: None, one str, or a list (or tuple) of str."""
    if value is None:
        return []
    if isinstance(value, str):
        stops = [value]
    elif isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(item, str) for item in value
    ):
        stops = list(value)
    else:
        raise ArgumentTypeError(f"stop must be a str or a list of str, got {shown(value, 200)}")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ConfigurationError(
            f"stop has {len(stops):,} stop sequences; at most {MAX_STOP_SEQUENCES} are accepted"
        )
    longest = max(map(len, stops), default=0)
    if longest > MAX_STOP_CHARS:
        raise ConfigurationError(
            f"a stop sequence of {longest:,} characters; at most {MAX_STOP_CHARS} are accepted"
        )
    return stops


def _check_text(text: str, what: str) -> None:
    """Text must be encodable as UTF-8 (llama.cpp's tokenizer takes bytes): no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{what} has an unpaired surrogate {text[exc.start]!r} at index {exc.start}, which "
            "is not text UTF-8 can encode (it often comes from decoding bytes with "
            "errors='surrogateescape'); remove it or decode with errors='replace'"
        ) from None


def _check_cancel(value: Any) -> None:
    if value is not None and not isinstance(value, CancelToken):
        raise ArgumentTypeError(
            f"cancel must be a serapeum.core.CancelToken or None, got {shown(value, 200)}"
        )


def _check_system_prompt(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ArgumentTypeError(
            f"system_prompt must be a str or None, got {type(value).__name__} {shown(value)}"
        )
    _check_text(value, "system_prompt")


def _check_flag(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False, got {shown(value)}")


def _check_optional_callable(_instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not callable(value):
        raise ArgumentTypeError(f"{attribute.name} must be a function or None, got {shown(value)}")


def _check_progress(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, bool) and not callable(value):
        raise ConfigurationError(
            "download_progress must be None, True, False or a callable(done, total), "
            f"got {shown(value)}"
        )


def _options_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{name} must be a dict of option name -> value, got {type(value).__name__}"
        )
    names = [key for key in value if not isinstance(key, str)]
    if names:
        raise ConfigurationError(f"{name} keys must be str, got {shown(names[0])}")
    return dict(value)


def _model_kwargs(value: Any) -> dict[str, Any]:
    """A dict of str keys; the backend checks the names and values (``check_load_options``)."""
    return _options_dict("model_kwargs", value)


def _server_urls(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(u, str) for u in value):
        return list(value)
    raise ConfigurationError(
        f"server_urls must be a URL or a non-empty list of URLs, got {shown(value, 200)}"
    )


def _check_api_key(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError("api_key must be a non-empty str or None")


def _check_backend(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(f"backend must be a backend name, got {shown(value)}")


# The distributions that provide the backends this project ships, for "not installed" errors.
BACKEND_DISTRIBUTIONS = {"server": "serapeum-backend-server"}


def _check_context_window(_instance: Any, _attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONTEXT:
        raise ConfigurationError(
            f"context_window must be a positive integer (1 to {MAX_CONTEXT}), got {shown(value)}"
        )


def _generate_kwargs(value: Any) -> dict[str, Any]:
    return _options_dict("generate_kwargs", value)


def _normalise_generation_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the seed's ``max_new_tokens`` spelling next to the backend's ``max_tokens``."""
    normalised = dict(values)
    if "max_new_tokens" in normalised:
        normalised["max_tokens"] = normalised.pop("max_new_tokens")
    return normalised


def _chunk_response(text: str, chunk: BackendChunk) -> CompletionResponse:
    return CompletionResponse(
        text=text,
        delta=chunk.delta,
        raw=chunk.raw,
        usage=chunk.usage,
        timing=chunk.timing,
        finish_reason=chunk.finish_reason,
    )


@contextmanager
def _linked(request: GenerationRequest, cancel: CancelToken) -> Iterator[GenerationRequest]:
    """The request with a token that the async machinery's and the caller's tokens both set.

    The two stay distinct: the machinery's means "the consumer is gone", the caller's means
    "stop and say so" (the answer so far still arrives, marked CANCELLED). The links are
    undone when the call ends, so a long-lived caller token collects no callbacks.
    """
    if request.cancel is None:
        yield evolve(request, cancel=cancel)
        return
    either = CancelToken()
    undo_ours, undo_callers = cancel.on_set(either.set), request.cancel.on_set(either.set)
    try:
        yield evolve(request, cancel=either)
    finally:
        undo_ours()
        undo_callers()


def _rewrite_prompts(instance: LlamaCPP, attribute: Attribute[Any], value: Any) -> Any:
    """After construction, a new prompt setting takes effect: the prompt writer is rebuilt.

    Runs before the value is stored, so a setting that cannot write prompts raises and
    leaves the instance as it was.
    """
    instance._rebuild_writer(**{attribute.name: value})
    return value


# The prompt settings: checked as at construction, then the writer follows them.
_PROMPT_SETTING = setters.pipe(setters.convert, setters.validate, _rewrite_prompts)


@define(kw_only=True, eq=False)
class LlamaCPP(CompletionToChatMixin, LLM):
    """A GGUF model run by llama.cpp, with the prompt format of its family.

    The model is resolved by a source plugin and loaded at construction; instances
    with the same model file and load options share one loaded model (and its lock).

    The prompt settings (``formatter``, ``messages_to_prompt``, ``completion_to_prompt``,
    ``system_prompt``) may be changed after construction: the next prompt follows them,
    stop markers included; a setting that cannot write prompts is refused and changes
    nothing. ``chat`` takes ``Message`` objects or OpenAI-style dicts; every call takes
    the keyword options of ``GenerationOptions``.
    """

    model_path: str | None = None
    model_url: str | None = field(default=None, repr=lambda url: repr(url and redact_url(url)))
    hf_model_id: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    model_sha256: str | None = None
    download_progress: bool | Callable[[int, int], None] | None = field(
        default=None, validator=_check_progress
    )
    temperature: float = field(default=DEFAULT_TEMPERATURE, validator=_validate(_check_temperature))
    max_new_tokens: int = field(
        default=DEFAULT_NUM_OUTPUTS, validator=_validate(_check_positive_int)
    )
    context_window: int = field(default=DEFAULT_CONTEXT_WINDOW, validator=_check_context_window)
    stop: list[str] = field(factory=list, converter=_stop_list)
    n_gpu_layers: int = field(default=0, validator=_check_gpu_layers)
    verbose: bool = field(default=False, validator=_check_flag)
    model_kwargs: dict[str, Any] = field(factory=dict, converter=_model_kwargs)
    generate_kwargs: dict[str, Any] = field(factory=dict, converter=_generate_kwargs)
    messages_to_prompt: Callable[..., str] | None = field(
        default=None, validator=_check_optional_callable, on_setattr=_PROMPT_SETTING
    )
    completion_to_prompt: Callable[..., str] | None = field(
        default=None, validator=_check_optional_callable, on_setattr=_PROMPT_SETTING
    )
    formatter: str | PromptFormatter | None = field(default=None, on_setattr=_PROMPT_SETTING)
    system_prompt: str | None = field(
        default=None, validator=_check_system_prompt, on_setattr=_PROMPT_SETTING
    )
    server_urls: list[str] | None = field(default=None, converter=_server_urls)
    api_key: str | None = field(default=None, repr=False, validator=_check_api_key)
    backend: str | None = field(default=None, validator=_check_backend)
    checked_load: bool = field(default=True, validator=_check_flag)
    n_parallel: int = field(default=1, validator=_validate(_check_positive_int))
    max_sessions: int | None = field(default=None, validator=_check_count)
    max_queue: int | None = field(default=None, validator=_check_count)
    saved_sessions_bytes: int | None = field(default=None, validator=_check_count)
    kv_unified: bool = field(default=False, validator=_check_flag)
    plugins: PluginHost | None = field(default=None, repr=False)

    _writer: PromptWriter = field(init=False, repr=False)
    _model: LoadedModel = field(init=False, repr=False)
    _resolved_path: Path | None = field(init=False, repr=False, default=None)
    _context_limit: int = field(init=False, repr=False)
    _formatter_reason: str = field(init=False, repr=False, default="")
    _host: PluginHost = field(init=False, repr=False)
    # The formatter recognised from the model, kept for a later change of the prompt settings.
    _detected: PromptFormatter | None = field(init=False, repr=False, default=None)
    _detected_reason: str = field(init=False, repr=False, default="")

    def __attrs_post_init__(self) -> None:
        host = self.plugins if self.plugins is not None else get_plugin_host()
        self._host = host
        # Everything that can be checked without the disk (or the network) is checked first.
        backend = self._backend_entry(host)
        self._check_generate_kwargs(self.generate_kwargs)
        explicit = explicit_choice(
            self.formatter, self.messages_to_prompt, self.completion_to_prompt
        )
        if explicit:
            self._writer = self._prompt_writer(self.formatter, host)
            self._formatter_reason = "chosen by the caller"
        path: Path | None = None
        if backend.needs_model_file:
            path = self._model_file(host)
            options = {
                "n_ctx": self.context_window,
                "n_gpu_layers": self.n_gpu_layers,
                "verbose": self.verbose,
                **self.model_kwargs,
                **self._batching_options(),
            }
            checked = require_gguf(path)  # whatever the source: structure first, then the checksum
            if self.model_sha256 is not None:
                require_sha256(path, self.model_sha256)
            require_context_fits(checked, int(options.get("n_ctx") or 0))
        else:
            # No n_ctx: the guard below applies context_window, so instances with other
            # windows share one pool of servers.
            options = {
                "urls": tuple(self.server_urls or ()),
                "api_key": self.api_key,
                "verbose": self.verbose,
                **self.model_kwargs,
            }
        key = cache_key(backend.name, path, options)
        self._model = MODEL_CACHE.get_or_load(key, lambda: self._load(backend, path, options))
        self._resolved_path = path
        # llama.cpp may round n_ctx up; the guard keeps to what the user asked for (n_ctx=0 in
        # model_kwargs asks for the model's own context).
        requested = int(options.get("n_ctx", self.context_window) or self._model.n_ctx)
        self._context_limit = min(requested, self._model.n_ctx)
        if self.model_path is None and path is not None:
            self.model_path = str(path)
        if not explicit:
            self._writer, self._formatter_reason = self._detected_writer(host)
        # generate_kwargs are every call's options: check them all now (ranges, vocabulary
        # bounds, schemas), not at the first call.
        self._build_request(" ", True, {})
        logger.info(
            "%s: prompt format %r, %s",
            self._model.name,
            self._writer.formatter_name or "functions",
            self._formatter_reason,
        )

    def _backend_entry(self, host: PluginHost) -> BackendSpec:
        """The backend asked for (``server_urls`` alone selects ``server``), its options checked."""
        wanted = self.backend or ("server" if self.server_urls is not None else "llama-cpp")
        try:
            backend = host.backends.get(wanted)
        except UnknownPluginError as exc:
            distribution = BACKEND_DISTRIBUTIONS.get(normalize_name(wanted))
            if distribution is None:
                raise
            raise BackendNotInstalledError(
                f"the {wanted!r} backend is not installed: pip install {distribution} (in this "
                f"repository: pip install -e plugins/{distribution})",
                name=wanted,
                available=exc.available,
                distribution=distribution,
            ) from exc
        if backend.needs_model_file and (self.server_urls is not None or self.api_key):
            setting = "server_urls" if self.server_urls is not None else "api_key"
            raise ConfigurationError(
                f"{setting} is for a server backend, but the {backend.name!r} backend runs a local "
                "model file; remove it, or say backend='server'"
            )
        if not backend.needs_model_file:
            batching = {
                "n_parallel": self.n_parallel != 1,
                "max_sessions": self.max_sessions is not None,
                "max_queue": self.max_queue is not None,
                "saved_sessions_bytes": self.saved_sessions_bytes is not None,
                "kv_unified": self.kv_unified,
            }
            given_batching = [name for name, given in batching.items() if given]
            if given_batching:
                raise ConfigurationError(
                    f"the {backend.name!r} backend's servers schedule requests themselves "
                    f"(llama-server -np N for slots); remove {', '.join(given_batching)}"
                )
            file_settings = {
                "model_path": self.model_path,
                "model_url": self.model_url,
                "hf_model_id": self.hf_model_id,
                "hf_filename": self.hf_filename,
                "hf_revision": self.hf_revision,
                "model_sha256": self.model_sha256,
            }
            given = [name for name, value in file_settings.items() if value is not None]
            if given:
                raise ConfigurationError(
                    f"the {backend.name!r} backend loads no local model file (its servers hold "
                    f"the model); remove {', '.join(given)}"
                )
        if backend.check_load_options is not None:
            self.model_kwargs = dict(backend.check_load_options(self.model_kwargs))
        return backend

    def _batching_options(self) -> dict[str, Any]:
        """Load options for slots and sessions; none for a single-sequence model (so its
        cache key, and the model it shares with other instances, stay as they were)."""
        sessions = self.max_sessions
        if sessions is None:
            sessions = DEFAULT_MAX_SESSIONS if self.n_parallel > 1 else 0
        if self.n_parallel == 1 and not sessions:
            given = (
                ("max_queue", self.max_queue),
                ("saved_sessions_bytes", self.saved_sessions_bytes),
                ("kv_unified", self.kv_unified or None),
            )
            unused = [name for name, value in given if value is not None]
            if unused:
                verb = "is" if len(unused) == 1 else "are"
                raise ConfigurationError(
                    f"{' and '.join(unused)} {verb} only used by a model with slots or "
                    "sessions; add n_parallel=N (N > 1) or max_sessions=N, or remove it"
                )
            return {}
        options: dict[str, Any] = {"n_parallel": self.n_parallel, "max_sessions": sessions}
        if self.max_queue is not None:
            options["max_queue"] = self.max_queue
        if self.saved_sessions_bytes is not None:
            options["saved_sessions_bytes"] = self.saved_sessions_bytes
        if self.kv_unified:
            options["kv_unified"] = True
        return options

    def _model_file(self, host: PluginHost) -> Path:
        """The local GGUF file, resolved through the source plugins (downloaded if need be)."""
        request = build_model_request(
            model_path=self.model_path,
            model_url=self.model_url,
            hf_model_id=self.hf_model_id,
            hf_filename=self.hf_filename,
            hf_revision=self.hf_revision,
            options={"sha256": self.model_sha256, "progress": self._progress_setting()},
            verify=partial(verify_model_file, checked_load=self.checked_load),
        )
        return resolve_model(request, host)

    def _load(
        self, backend: BackendSpec, path: Path | None, options: dict[str, Any]
    ) -> LoadedModel:
        """Load through the backend, after the checked load (a child process) for new files.

        The structure check already ran in ``__attrs_post_init__``; only the probe is left.
        """
        if self.checked_load and path is not None:
            load_in_child(path)
        return backend.load(path, options)

    def _prompt_writer(
        self, formatter: str | PromptFormatter | None, host: PluginHost, **changes: Any
    ) -> PromptWriter:
        """The writer for ``formatter`` and the prompt settings, with ``changes`` applied."""
        settings = {
            "messages_to_prompt": self.messages_to_prompt,
            "completion_to_prompt": self.completion_to_prompt,
            "system_prompt": self.system_prompt,
            **changes,
        }
        return build_prompt_writer(
            formatter=formatter,
            messages_to_prompt=settings["messages_to_prompt"],
            completion_to_prompt=settings["completion_to_prompt"],
            system_prompt=settings["system_prompt"],
            plugins=host,
        )

    def _detected_writer(self, host: PluginHost, **changes: Any) -> tuple[PromptWriter, str]:
        """The model's own format, with a prompt function given alone in place of its own.

        A model whose format cannot be detected needs both functions (or a formatter), and
        the error says which one is missing.
        """
        settings = {
            "messages_to_prompt": self.messages_to_prompt,
            "completion_to_prompt": self.completion_to_prompt,
            **changes,
        }
        if self._detected is None:
            try:
                self._detected, self._detected_reason = detect_formatter(self._model.info, host)
            except MissingFormatterError:
                if (
                    settings["messages_to_prompt"] is None
                    and settings["completion_to_prompt"] is None
                ):
                    raise
                self._prompt_writer(None, host, **changes)  # raises: names the missing function
                raise
        reason = self._detected_reason
        given = [name for name, value in settings.items() if value is not None]
        if given:
            reason += f"; your {given[0]} writes those prompts"
        return self._prompt_writer(self._detected, host, **changes), reason

    def _rebuild_writer(self, **changes: Any) -> None:
        """Write prompts as the settings say once ``changes`` (one prompt setting) apply.

        With no explicit choice left (formatter and both functions None) the model's own
        format is used, as at construction. Stop markers follow the new formatter.
        """
        settings: dict[str, Any] = {
            "formatter": self.formatter,
            "messages_to_prompt": self.messages_to_prompt,
            "completion_to_prompt": self.completion_to_prompt,
            **changes,
        }
        formatter = settings.pop("formatter")
        if explicit_choice(
            formatter, settings["messages_to_prompt"], settings["completion_to_prompt"]
        ):
            writer = self._prompt_writer(formatter, self._host, **settings)
            reason = "chosen by the caller"
        else:
            writer, reason = self._detected_writer(self._host, **settings)
        self._writer = writer
        self._formatter_reason = reason
        logger.info(
            "%s: prompt format now %r, %s",
            self._model.name,
            writer.formatter_name or "functions",
            reason,
        )

    def _progress_setting(self) -> bool | Callable[[int, int], None] | None:
        """Download progress: as asked, else shown when verbose (None: when stderr is a TTY)."""
        if self.download_progress is not None:
            return self.download_progress
        return True if self.verbose else None

    # -- information ----------------------------------------------------------------
    @classmethod
    def class_name(cls) -> str:
        """``"LlamaCPP"``: the name the seed's serialisation and tests use for this class."""
        return "LlamaCPP"

    @property
    def metadata(self) -> Metadata:
        """Context window (as enforced), ``max_new_tokens``, the model's name; not chat-native
        (chat is written in the model's prompt format and completed)."""
        return Metadata(
            context_window=self._context_limit,
            num_output=self.max_new_tokens,
            model_name=self._model.name,
            is_chat_model=False,
        )

    @property
    def formatter_name(self) -> str | None:
        """The registered formatter in use, or None for plain functions."""
        return self._writer.formatter_name

    @property
    def formatter_reason(self) -> str:
        """Why this prompt format: chosen by the caller, recognised by a plugin, or the GGUF's template."""
        return self._formatter_reason

    @property
    def supports_json_schema(self) -> bool:
        """Whether ``complete(..., json_schema=...)`` constrains decoding (the backend can)."""
        return self._model.capabilities.json_schema

    @property
    def loaded_model(self) -> LoadedModel:
        """The shared loaded model (advanced use: benchmarks, diagnostics)."""
        return self._model

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model sees a prompt (with BOS, exactly once)."""
        return self._model.tokenize(text)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes as a prompt (BOS included)."""
        return len(self.tokenize(text))

    # -- prompt writing -------------------------------------------------------------
    def format_messages(self, messages: Sequence[MessageLike]) -> str:
        """The prompt ``chat`` would send for ``messages``, in the model's format.

        Takes ``Message`` objects or OpenAI-style dicts, as ``chat`` does; ``system_prompt``
        applies when no system message leads.
        """
        return self._writer.messages(as_messages(messages))

    def format_completion(self, prompt: str) -> str:
        """The prompt ``complete`` would send for ``prompt`` (one user turn, in the model's
        format, with ``system_prompt``)."""
        return self._writer.completion(prompt)

    # -- requests -------------------------------------------------------------------
    @staticmethod
    def _check_generate_kwargs(values: Mapping[str, Any]) -> None:
        values = _normalise_generation_kwargs(values)
        if "temperature" in values:
            _check_temperature(values["temperature"])
        if "max_tokens" in values:
            _check_positive_int(values["max_tokens"], "max_new_tokens")
        if "stop" in values:
            _stop_list(values["stop"])
        if "cancel" in values:
            _check_cancel(values["cancel"])
        if "session" in values:
            _check_session(values["session"])

    def _build_request(
        self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]
    ) -> GenerationRequest:
        if not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt must be a str, got {type(prompt).__name__}")
        _check_text(prompt, "the prompt")
        settings: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
            "stop": self.stop,
        }
        settings.update(_normalise_generation_kwargs(self.generate_kwargs))
        per_call = _normalise_generation_kwargs(kwargs)
        self._check_generate_kwargs(per_call)
        settings.update(per_call)

        writer = self._writer  # one writer for the prompt and its stop markers
        text = prompt if formatted else writer.completion(prompt)
        _check_text(text, "the formatted prompt")
        tokens = self._model.tokenize(text)
        n_ctx = self._context_limit
        if len(tokens) >= n_ctx:
            raise ContextWindowExceededError(
                f"the prompt is {len(tokens)} tokens but the context window is {n_ctx} "
                f"tokens, leaving no room for an answer; shorten the prompt or raise "
                f"context_window (the model's own limit is in its GGUF metadata)",
                prompt_tokens=len(tokens),
                context_window=n_ctx,
            )
        stop = list(dict.fromkeys([*_stop_list(settings["stop"]), *writer.stop]))
        options = {k: val for k, val in settings.items() if k not in _SAMPLING_FIELDS}
        cancel = settings.get("cancel")
        _check_cancel(cancel)
        request = GenerationRequest(
            prompt_tokens=tokens,
            max_tokens=min(operator.index(settings["max_tokens"]), n_ctx - len(tokens)),
            temperature=float(settings["temperature"]),
            stop=stop,
            options=options,
            cancel=cancel,
            prompt_text=text,
            session=settings.get("session"),
        )
        self._model.check_options(request)
        return request

    # -- completion -----------------------------------------------------------------
    @overload
    def complete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse: ...

    @overload
    def complete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponseGen: ...

    def complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse | CompletionResponseGen:
        """Complete ``prompt`` (written in the model's format unless ``formatted``).

        Keyword options (``GenerationOptions``: ``temperature``, ``max_new_tokens``,
        ``stop``, ``top_p``, ``top_k``, ``seed``, ``json_schema``, ``grammar``, ``session``
        ...) override ``generate_kwargs`` and the instance's settings for this call only;
        an unknown name raises ``ConfigurationError`` listing the accepted ones.
        ``cancel=CancelToken()`` lets another thread stop generation
        (the answer so far comes back with ``finish_reason`` CANCELLED). With
        ``stream=True`` returns an iterator of chunks whose ``delta`` is the new text and
        ``text`` the text so far. The response, or a stream's last chunk, carries
        ``usage``, ``timing`` and ``finish_reason``.
        """
        request = self._build_request(prompt, formatted, kwargs)
        if not self._model.capabilities.concurrent:
            reentry.refuse_blocking_call(self._model)
        if stream:
            return self._stream(request)
        return self._complete(request)

    def _complete_linked(
        self, request: GenerationRequest, cancel: CancelToken
    ) -> CompletionResponse:
        with _linked(request, cancel) as linked:
            return self._complete(linked)

    def _stream_linked(
        self, request: GenerationRequest, cancel: CancelToken
    ) -> Iterator[BackendChunk]:
        with _linked(request, cancel) as linked:
            yield from self._model.stream(linked)

    def _complete(self, request: GenerationRequest) -> CompletionResponse:
        result = self._model.complete(request)
        return CompletionResponse(
            text=result.text,
            raw=result.raw,
            usage=result.usage,
            timing=result.timing,
            finish_reason=result.finish_reason,
        )

    def _stream(self, request: GenerationRequest) -> Iterator[CompletionResponse]:
        chunks = self._model.stream(request)
        text = ""
        try:
            for chunk in chunks:
                text += chunk.delta
                yield _chunk_response(text, chunk)
        finally:
            chunks.close()

    @overload
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse: ...

    @overload
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponseAsyncGen: ...

    async def acomplete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse | CompletionResponseAsyncGen:
        """``complete`` without blocking the event loop; generation runs in a worker thread.

        With ``stream=True`` returns an async iterator that yields each chunk as soon as
        it is generated. Cancelling the task, ``break`` or ``aclose()`` stops generation
        within a token and frees the model.
        """
        if self._model.capabilities.concurrent:
            # Its tokenizer may be a network call (a server's): never on the event loop.
            request = await asyncio.to_thread(self._build_request, prompt, formatted, kwargs)
        else:
            request = self._build_request(prompt, formatted, kwargs)
            reentry.refuse_async_call(self._model)
        if stream:
            # A model that runs requests concurrently cannot deadlock behind a stream.
            marker = (
                None if self._model.capabilities.concurrent else reentry.new_stream(self._model)
            )
            return self._astream(request, marker)
        return await run_in_thread(
            lambda cancel: self._complete_linked(request, cancel),
            worker=_worker_for(self._model),
        )

    async def _astream(
        self, request: GenerationRequest, marker: reentry.StreamMarker | None
    ) -> AsyncIterator[CompletionResponse]:
        if marker is not None:
            reentry.stream_started(marker, self._model)  # refuses a stream that would deadlock
        chunks = iterate_in_thread(
            lambda cancel: self._stream_linked(request, cancel),
            worker=_worker_for(self._model),
        )
        text = ""
        try:
            async for chunk in chunks:
                text += chunk.delta
                yield _chunk_response(text, chunk)
        finally:
            if marker is not None:
                reentry.stream_closed(marker, self._model)
            await chunks.aclose()  # type: ignore[attr-defined]
