"""``ServerModel``: the ``LoadedModel`` protocol over one or more HTTP inference servers.

The engine has already written the prompt, counted its tokens (``tokenize``, with a
server's tokenizer) and guarded the context. Here a request is routed (``ServerPool``:
affinity, least loaded), streamed (SSE), and moved to another server when the chosen one
refuses or dies before its first token. After the first token a dying server is a
``ServerDisconnectedError`` carrying the text so far: never a silent second generation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import httpx

from serapeum.core.errors import IncompleteJSONError
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins import (
    BackendCapabilities,
    BackendChunk,
    BackendResult,
    ChunkStream,
    GenerationRequest,
    ModelInfo,
)
from serapeum.core.redact import redact_text, redact_url
from serapeum_backend_server.detect import ServerDescription, check_health
from serapeum_backend_server.errors import (
    ServerDisconnectedError,
    ServerProtocolError,
    ServerUnavailableError,
    error_detail,
    is_retryable_status,
    response_error,
)
from serapeum_backend_server.options import ServerOptions
from serapeum_backend_server.pool import Lease, ServerPool
from serapeum_backend_server.protocols import WireChunk, check_options, requested_schema
from serapeum_backend_server.sse import DONE, iter_sse_data

logger = logging.getLogger("serapeum.backend.server")


class _Retry(Exception):
    """This server cannot take the request now; another may (never leaves this module)."""

    def __init__(self, problem: str, *, server_down: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.server_down = server_down


def _closer(response: httpx.Response) -> Any:
    """A callback that closes ``response`` (a cancel from another thread unblocks its read)."""

    def close() -> None:
        try:
            response.close()
        except Exception:  # a response closing under a read may complain; it is closed
            logger.debug("closing a cancelled response", exc_info=True)

    return close


class ServerModel:
    """Generation on a pool of servers that serve the same model.

    Thread-safe: the httpx client pools connections and the pool's routing state has its
    own lock, so the engine runs many requests at once (``capabilities.concurrent``).
    """

    def __init__(
        self,
        options: ServerOptions,
        client: httpx.Client,
        servers: Sequence[ServerDescription],
        *,
        down: dict[int, str] | None = None,
    ) -> None:
        self._options = options
        self._client = client
        self._servers = tuple(servers)
        self._pool = ServerPool(
            [server.url for server in self._servers],
            [server.slots for server in self._servers],
            routing=options.routing,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
        )
        for index, problem in (down or {}).items():
            self._pool.mark_down(index, problem)
        first = self._servers[0]
        known = [server.n_ctx for server in self._servers if server.n_ctx]
        limits = [*known, *([options.n_ctx] if options.n_ctx else [])]
        self._n_ctx = min(limits) if limits else 2048
        supported = frozenset.intersection(
            *(server.protocol.supported_options for server in self._servers)
        )
        self._capabilities = BackendCapabilities(
            json_schema="json_schema" in supported,
            grammar="grammar" in supported,
            logprobs="logprobs" in supported,
            concurrent=True,
        )
        self._info = ModelInfo(
            architecture=str(first.raw_props.get("architecture", "")),
            name=first.model_id,
            chat_template=first.chat_template,
            bos_token=first.bos_token,
            eos_token=first.eos_token,
            metadata={"server.protocol": first.protocol.name, "server.model": first.model_id},
        )
        more = f" (+{len(self._servers) - 1} more)" if len(self._servers) > 1 else ""
        self._name = f"{first.model_id or 'model'} at {redact_url(first.url)}{more}"
        self._closed = threading.Event()

    # -- what the engine reads -----------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def name(self) -> str:
        return self._name

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def capabilities(self) -> BackendCapabilities:
        return self._capabilities

    @property
    def pool(self) -> ServerPool:
        """The routing state (diagnostics and benchmarks)."""
        return self._pool

    @property
    def servers(self) -> tuple[ServerDescription, ...]:
        return self._servers

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._client.close()

    # -- tokens --------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """The prompt's tokens by a server's own tokenizer, BOS exactly once.

        The first server that is up and can tokenize answers; a server without a tokenize
        endpoint (a plain OpenAI-compatible one) leaves the count to the server: ``[]``.
        """
        problems: dict[str, str] = {}
        for index, server in self._tokenizers():
            route = server.protocol.tokenize_body(text)
            if route is None:
                continue
            path, body = route
            try:
                payload = self._post_json(server, path, body)
            except _Retry as retry:
                problems[server.url] = retry.problem
                if retry.server_down:
                    self._pool.mark_down(index, retry.problem)
                continue
            tokens = server.protocol.parse_tokens(payload)
            bos = server.bos_id
            if server.adds_bos and bos is not None and (not tokens or tokens[0] != bos):
                tokens.insert(0, bos)
            return tokens
        if problems:
            raise ServerUnavailableError(problems=problems)
        return []

    def _tokenizers(self) -> Iterator[tuple[int, ServerDescription]]:
        """Servers that can tokenize: those up first, then the rest (one may have recovered)."""
        usable = [(i, s) for i, s in enumerate(self._servers) if s.can_tokenize]
        down = self._pool.problems()
        yield from ((i, s) for i, s in usable if i not in down)
        yield from ((i, s) for i, s in usable if i in down)

    def _post_json(self, server: ServerDescription, path: str, body: dict[str, Any]) -> Any:
        action = f"POST {path}"
        try:
            response = self._client.post(server.url + path, json=body)
        except httpx.TransportError as exc:
            raise _Retry(f"{action} failed: {_reason(exc)}", server_down=True) from None
        if is_retryable_status(response.status_code):
            detail = error_detail(response.content)
            raise _Retry(f"{action}: HTTP {response.status_code} {detail}", server_down=False)
        if response.status_code != 200:
            raise response_error(
                response.status_code,
                error_detail(response.content),
                server=server.url,
                action=action,
            )
        try:
            return response.json()
        except ValueError:
            raise ServerProtocolError(
                f"{redact_url(server.url)} answered {action} with something that is not JSON",
                status=response.status_code,
                server=server.url,
            ) from None

    def check_options(self, request: GenerationRequest) -> None:
        """Every server's protocol must carry every option (a pool mixes nothing silently)."""
        for server in self._servers:
            check_options(server.protocol, request.options, server=server.url)

    # -- generation ----------------------------------------------------------------------
    def complete(self, request: GenerationRequest) -> BackendResult:
        parts: list[str] = []
        last: BackendChunk | None = None
        for chunk in self.stream(request):
            parts.append(chunk.delta)
            last = chunk
        assert last is not None  # a stream always ends with its summary chunk
        return BackendResult(
            text="".join(parts),
            raw=last.raw,
            usage=last.usage,
            timing=last.timing,
            finish_reason=last.finish_reason,
        )

    def stream(self, request: GenerationRequest) -> ChunkStream:
        """Route, stream, and fail over until the first token; see the module docstring."""
        started = time.perf_counter()
        tried: set[int] = set()
        problems: dict[str, str] = {}
        while True:
            if request.cancel is not None and request.cancel.is_set():
                yield _summary_chunk(request, "", {}, started, started, None)
                return
            lease = self._pool.choose(request.prompt_tokens, exclude=tried)
            if lease is None:
                for index, problem in self._pool.problems().items():
                    problems.setdefault(self._servers[index].url, problem)
                raise ServerUnavailableError(problems=problems or {"pool": "no server is up"})
            server = self._servers[lease.server]
            ok = False
            try:
                if self._pool.needs_probe(lease.server):
                    self._probe(lease.server)
                ok = yield from self._stream_from(server, lease, request, started)
                return
            except _Retry as retry:
                tried.add(lease.server)
                problems[server.url] = retry.problem
                if retry.server_down:
                    self._pool.mark_down(lease.server, retry.problem)
                logger.info("%s: %s; trying another server", redact_url(server.url), retry.problem)
            finally:
                self._pool.finished(lease, request.prompt_tokens, ok)

    def _probe(self, index: int) -> None:
        """A server that was down gets a health check before it gets a request again."""
        try:
            check_health(self._client, self._servers[index])
        except ServerUnavailableError as exc:
            raise _Retry(f"still down ({exc})", server_down=True) from None
        self._pool.mark_up(index)

    def _stream_from(
        self,
        server: ServerDescription,
        lease: Lease,
        request: GenerationRequest,
        started: float,
    ) -> Generator[BackendChunk, None, bool]:
        """Stream one attempt; ``_Retry`` while nothing has been yielded. Returns success."""
        path, body = server.protocol.completion_body(request, slot=lease.slot, stream=True)
        parts: list[str] = []
        first_at: float | None = None
        final: dict[str, Any] = {}
        events = 0
        cancel = request.cancel
        try:
            with self._client.stream("POST", server.url + path, json=body) as response:
                self._check_status(server, path, response)
                undo = cancel.on_set(_closer(response)) if cancel is not None else None
                try:
                    for data in iter_sse_data(response.iter_lines()):
                        if data == DONE:
                            break
                        chunk = server.protocol.parse_event(_json(data, server))
                        if chunk.delta or chunk.finish_reason is None:
                            events += 1
                        _merge_final(final, chunk)
                        if chunk.delta:
                            if first_at is None:
                                first_at = time.perf_counter()
                            parts.append(chunk.delta)
                            yield BackendChunk(delta=chunk.delta, raw=chunk.raw)
                        if cancel is not None and cancel.is_set():
                            final["finish_reason"] = FinishReason.CANCELLED
                            break
                        if chunk.finish_reason is not None and server.protocol.kind != "openai":
                            break  # llama-server's last event; nothing follows it
                finally:
                    if undo is not None:
                        undo()
        except httpx.TransportError as exc:
            if cancel is not None and cancel.is_set():
                final["finish_reason"] = FinishReason.CANCELLED
            elif not parts:
                raise _Retry(f"the connection failed: {_reason(exc)}", server_down=True) from None
            else:
                self._pool.mark_down(lease.server, f"disconnected mid-stream: {_reason(exc)}")
                raise ServerDisconnectedError(
                    f"{redact_url(server.url)} went away after {len(parts)} chunks "
                    f"({_reason(exc)}); the text so far is on this error's .text",
                    text="".join(parts),
                    server=server.url,
                ) from None
        if final.get("finish_reason") is None:
            if not parts:
                raise _Retry("the stream ended without an answer", server_down=True)
            raise ServerDisconnectedError(
                f"{redact_url(server.url)} ended the stream without finishing the answer",
                text="".join(parts),
                server=server.url,
            )
        text = "".join(parts)
        if "usage" not in final:  # llama-cpp-python's server: one event per generated token
            final["usage"] = Usage(
                prompt_tokens=len(request.prompt_tokens), completion_tokens=events
            )
        summary = _summary_chunk(request, text, final, started, first_at, server)
        if summary.finish_reason is not FinishReason.CANCELLED:
            _require_json(request, text, summary.finish_reason)
        yield summary
        return True

    def _check_status(self, server: ServerDescription, path: str, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        response.read()
        detail = error_detail(response.content)
        if is_retryable_status(status):
            raise _Retry(f"HTTP {status} ({detail or 'busy'})", server_down=status >= 500)
        raise response_error(status, detail, server=server.url, action=f"POST {path}")


def _reason(exc: BaseException) -> str:
    return redact_text(str(exc)) or type(exc).__name__


def _json(data: str, server: ServerDescription) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ServerProtocolError(
            f"{redact_url(server.url)} streamed an event that is not JSON: {data[:120]!r}",
            status=200,
            server=server.url,
        ) from None


def _merge_final(final: dict[str, Any], chunk: WireChunk) -> None:
    """Keep what the closing events say (an OpenAI stream may send usage after the finish)."""
    if chunk.finish_reason is not None:
        final["finish_reason"] = chunk.finish_reason
        final["raw"] = chunk.raw
    if chunk.usage is not None:
        final["usage"] = chunk.usage
    if chunk.timing is not None:
        final["timing"] = chunk.timing


def _summary_chunk(
    request: GenerationRequest,
    text: str,
    final: dict[str, Any],
    started: float,
    first_at: float | None,
    server: ServerDescription | None,
) -> BackendChunk:
    """The stream's last chunk: usage and timing as the server reported them, else measured."""
    now = time.perf_counter()
    usage: Usage | None = final.get("usage")
    if usage is None:
        usage = Usage(prompt_tokens=len(request.prompt_tokens), completion_tokens=0)
    reported: Timing | None = final.get("timing")
    first = first_at if first_at is not None else now
    generation_seconds = max(now - first, 0.0)
    n = usage.completion_tokens
    timing = Timing(
        time_to_first_token=first - started,
        prompt_seconds=reported.prompt_seconds if reported is not None else first - started,
        generation_seconds=generation_seconds,
        tokens_per_second=reported.tokens_per_second
        if reported is not None and reported.tokens_per_second
        else ((n - 1) / generation_seconds if n > 1 and generation_seconds > 0 else 0.0),
    )
    raw = dict(final.get("raw") or {})
    if server is not None:
        raw.setdefault("server", redact_url(server.url))
    return BackendChunk(
        delta="",
        raw=raw,
        usage=usage,
        timing=timing,
        finish_reason=final.get("finish_reason", FinishReason.CANCELLED),
    )


def _require_json(request: GenerationRequest, text: str, finish: FinishReason | None) -> None:
    """A schema-constrained answer must parse: the same promise the in-process backend makes."""
    if requested_schema(request.options) is None:
        return
    try:
        json.loads(text)
    except ValueError as exc:
        cause = (
            "max_new_tokens ran out; raise it"
            if finish is FinishReason.LENGTH
            else "the server ended it early (a stop sequence?)"
        )
        raise IncompleteJSONError(
            f"the constrained answer is not valid JSON ({exc}): {cause}; it was {text[:200]!r}",
            text=text,
        ) from exc
