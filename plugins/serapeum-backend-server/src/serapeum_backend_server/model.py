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
import socket
import threading
import time
import weakref
from collections.abc import Collection, Generator, Iterator, Sequence
from typing import Any

import httpx

from serapeum.core.errors import ConfigurationError, IncompleteJSONError, SerapeumError
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
from serapeum_backend_server.detect import ServerDescription, check_health, describe_server
from serapeum_backend_server.errors import (
    ServerDisconnectedError,
    ServerProtocolError,
    ServerResponseError,
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

# ServerModel.n_ctx when no server reports its context: the engine's guard is then the
# caller's context_window alone (the engine takes the smaller of the two).
UNREPORTED_CONTEXT = 2**31 - 1


class _Retry(Exception):
    """This server cannot take the request now; another may (never leaves this module)."""

    def __init__(self, problem: str, *, server_down: bool, stale: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.server_down = server_down
        self.stale = stale  # a kept-alive connection the server had closed: try it again


class _Interrupter:
    """A cancel callback that unblocks a read waiting on the server, from another thread.

    Closing a socket does not wake a ``recv`` blocked in another thread on Linux; shutting
    it down does. ``disarm`` runs before the callback is unregistered, because a
    ``CancelToken`` may still call it after that: by then the connection may be back in the
    pool serving another request, and must not be touched.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._armed = True
        self._lock = threading.Lock()

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    def __call__(self) -> None:
        with self._lock:
            if not self._armed:
                return
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the server
                pass


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
        undescribed: Collection[int] = (),
    ) -> None:
        self._options = options
        self._client = client
        # Replaced (one item at a time) when a server down at start is described later.
        self._servers = list(servers)
        self._undescribed = set(undescribed)
        self._probe_locks = [threading.Lock() for _ in self._servers]
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
        known = [
            server.n_ctx
            for index, server in enumerate(self._servers)
            if server.n_ctx and index not in self._undescribed
        ]
        limits = [*known, *([options.n_ctx] if options.n_ctx else [])]
        # No server says (llama-cpp-python's): the caller's context_window is the guard.
        self._n_ctx = min(limits) if limits else UNREPORTED_CONTEXT
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
        # Connections close when the model goes, even if nobody calls close().
        weakref.finalize(self, client.close)

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
        return tuple(self._servers)

    def close(self) -> None:
        """Close every connection; later requests raise ``ConfigurationError``."""
        if not self._closed.is_set():
            self._closed.set()
            self._client.close()

    def _require_open(self) -> None:
        if self._closed.is_set():
            raise ConfigurationError(
                f"{self._name} was closed (loaded_model.close()); make a new LlamaCPP"
            )

    # -- tokens --------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """The prompt's tokens by a server's own tokenizer, BOS exactly once.

        The first server that is up and can tokenize answers; a server without a tokenize
        endpoint (a plain OpenAI-compatible one) leaves the count to the server: ``[]``.
        """
        self._require_open()
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
                logger.info("%s: %s; asking another server", redact_url(server.url), retry.problem)
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
        """Servers that can tokenize: up ones least loaded first, then the down ones.

        Least loaded first because llama-cpp-python's server tokenizes under the same lock
        as it generates: asking a busy one would queue the request behind its generation.
        """
        usable = [(i, s) for i, s in enumerate(self._servers) if s.can_tokenize]
        down = self._pool.problems()
        up = [(i, s) for i, s in usable if i not in down]
        up.sort(key=lambda item: self._pool.in_flight(item[0]) / item[1].slots)
        yield from up
        yield from ((i, s) for i, s in usable if i in down)

    def _post_json(self, server: ServerDescription, path: str, body: dict[str, Any]) -> Any:
        action = f"POST {path}"
        try:
            try:
                response = self._client.post(server.url + path, json=body)
            except httpx.RemoteProtocolError:  # a kept-alive connection the server closed
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
        self._require_open()
        started = time.perf_counter()
        tried: set[int] = set()
        reconnected: set[int] = set()
        again: int | None = None
        problems: dict[str, str] = {}
        self._probe_due_servers()
        probed_all = False
        while True:
            if request.cancel is not None and request.cancel.is_set():
                yield _summary_chunk(request, "", {}, started, started, None)
                return
            lease = None
            if again is not None:  # the same server once more, on a fresh connection
                others = set(range(len(self._servers))) - {again}
                lease = self._pool.choose(request.prompt_tokens, exclude=others)
                again = None
            if lease is None:
                lease = self._pool.choose(request.prompt_tokens, exclude=tried)
            if lease is None:
                # Every server is down or tried: ask the down ones now (a blip on a
                # one-server pool must not fail requests for a whole backoff).
                if not probed_all and self._probe_now(exclude=tried):
                    probed_all = True
                    continue
                for index, problem in self._pool.problems().items():
                    problems.setdefault(self._servers[index].url, problem)
                raise ServerUnavailableError(problems=problems or {"pool": "no server is up"})
            server = self._servers[lease.server]
            summary: BackendChunk | None = None
            text = ""
            try:
                if self._pool.needs_probe(lease.server):
                    self._probe(lease.server)
                    server = self._servers[lease.server]
                summary, text = yield from self._stream_from(server, lease, request, started)
            except _Retry as retry:
                if retry.stale and lease.server not in reconnected:
                    reconnected.add(lease.server)
                    again = lease.server
                    continue
                tried.add(lease.server)
                problems[server.url] = retry.problem
                if retry.server_down:
                    self._pool.mark_down(lease.server, retry.problem)
                logger.info("%s: %s; trying another server", redact_url(server.url), retry.problem)
                continue
            finally:
                # The slot holds the prompt once the answer is complete, even when the
                # consumer stops at the last chunk or the JSON check below refuses it.
                self._pool.finished(lease, request.prompt_tokens, summary is not None)
            if summary.finish_reason is not FinishReason.CANCELLED:
                _require_json(request, text, summary.finish_reason)
            yield summary
            return

    # -- health ----------------------------------------------------------------------------
    def _probe(self, index: int) -> None:
        """A server that was down gets a health check before it gets a request again."""
        try:
            self._check_and_refresh(index)
        except ServerUnavailableError as exc:
            raise _Retry(f"still down ({exc})", server_down=True) from None
        self._pool.mark_up(index)

    def _check_and_refresh(self, index: int) -> None:
        """Health-check a server; one never described (down at start) is described now."""
        server = self._servers[index]
        check_health(self._client, server)
        if index in self._undescribed:
            self._servers[index] = describe_server(self._client, server.url, self._options)
            self._undescribed.discard(index)

    def _probe_due_servers(self) -> None:
        """Health-check, in the background, the down servers whose backoff has elapsed."""
        for index in self._pool.claim_probes():
            threading.Thread(
                target=self._background_probe, args=(index,), name="serapeum-probe", daemon=True
            ).start()

    def _background_probe(self, index: int) -> None:
        try:
            self._check_and_refresh(index)
        except SerapeumError as exc:
            self._pool.mark_down(index, f"still down ({exc})")
        else:
            self._pool.mark_up(index)

    def _probe_now(self, exclude: set[int]) -> bool:
        """Probe every down server not yet tried by this request; True when one came back."""
        back = False
        for index in self._pool.problems():
            if index in exclude:
                continue
            with self._probe_locks[index]:  # concurrent requests wait for one probe
                if index not in self._pool.problems():
                    back = True  # another request's probe brought it back
                    continue
                try:
                    self._check_and_refresh(index)
                except SerapeumError as exc:
                    self._pool.mark_down(index, f"still down ({exc})")
                else:
                    self._pool.mark_up(index)
                    back = True
        return back

    # -- one attempt ---------------------------------------------------------------------------
    def _stream_from(
        self,
        server: ServerDescription,
        lease: Lease,
        request: GenerationRequest,
        started: float,
    ) -> Generator[BackendChunk, None, tuple[BackendChunk, str]]:
        """Stream one attempt; return its summary chunk and text. ``_Retry`` while nothing arrived."""
        protocol = server.protocol
        path, body = protocol.completion_body(request, slot=lease.slot, stream=True)
        parse = protocol.parse_event
        final_event_ends = protocol.kind != "openai"  # llama-server sends nothing after it
        parts: list[str] = []
        first_at: float | None = None
        final: dict[str, Any] = {}
        events = 0
        cancel = request.cancel
        try:
            with self._client.stream("POST", server.url + path, json=body) as response:
                self._check_status(server, path, response)
                interrupt = _Interrupter(response)
                undo = cancel.on_set(interrupt) if cancel is not None else None
                try:
                    if cancel is not None and cancel.is_set():
                        final["finish_reason"] = FinishReason.CANCELLED
                        return _summary_chunk(request, "", final, started, first_at, server), ""
                    lines = iter_sse_data(response.iter_lines())
                    for data in lines:
                        if data == DONE:
                            break
                        try:
                            chunk = parse(_json(data, server))
                        except ServerResponseError as exc:
                            raise self._error_event(exc, parts) from None
                        if chunk.delta or chunk.finish_reason is None:
                            events += 1
                        if chunk.finish_reason or chunk.usage or chunk.timing:
                            _merge_final(final, chunk)
                        if chunk.delta:
                            if first_at is None:
                                first_at = time.perf_counter()
                            parts.append(chunk.delta)
                            yield BackendChunk(delta=chunk.delta, raw=chunk.raw)
                        if cancel is not None and cancel.is_set():
                            final["finish_reason"] = FinishReason.CANCELLED
                            break
                        if final_event_ends and chunk.finish_reason is not None:
                            break
                    if final.get("finish_reason") not in (None, FinishReason.CANCELLED):
                        for _ in lines:  # read to the end: the connection goes back to the pool
                            pass
                finally:
                    interrupt.disarm()
                    if undo is not None:
                        undo()
        except (httpx.TransportError, httpx.StreamError) as exc:
            if cancel is not None and cancel.is_set():
                final["finish_reason"] = FinishReason.CANCELLED
            elif not parts:
                # A server closes idle kept-alive connections; the next request on one finds
                # it closed before any byte. That is not the server being down.
                stale = isinstance(exc, httpx.RemoteProtocolError) and first_at is None
                raise _Retry(
                    f"the connection failed: {_reason(exc)}", server_down=True, stale=stale
                ) from None
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
        if "usage" not in final:  # llama-cpp-python's server: one event per generated token
            final["usage"] = Usage(
                prompt_tokens=len(request.prompt_tokens), completion_tokens=events
            )
        text = "".join(parts)
        return _summary_chunk(request, text, final, started, first_at, server), text

    @staticmethod
    def _error_event(exc: ServerResponseError, parts: list[str]) -> Exception:
        """An error event in a 200 stream: retry elsewhere if nothing arrived and it may help."""
        if not parts and is_retryable_status(exc.status):
            return _Retry(f"an error event: {exc.detail or exc}", server_down=exc.status >= 500)
        exc.text = "".join(parts)
        return exc

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
