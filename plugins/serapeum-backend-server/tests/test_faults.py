"""Failures real servers cannot be made to produce on cue, from a real fault-injecting server."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from serapeum.core.cancellation import CancelToken
from serapeum.core.errors import ConfigurationError, SchemaError
from serapeum.core.llms import FinishReason
from serapeum.llama_cpp import LlamaCPP
from serapeum_backend_server import ServerResponseError, ServerUnavailableError

from .fault_server import FaultServer, Handler


def _llm(*urls: str, **settings: Any) -> LlamaCPP:
    return LlamaCPP(
        server_urls=list(urls), formatter="llama2", temperature=0.0, max_new_tokens=8, **settings
    )


def _ok(handler: Handler, _body: dict[str, Any]) -> None:
    handler.answer("Hel", "lo")


def test_cancel_while_the_server_is_still_on_the_prompt(tmp_path: Any) -> None:
    """The read waiting for the first byte is interrupted (a closed socket would not wake it)."""

    def stall(handler: Handler, _body: dict[str, Any]) -> None:
        handler.stream_headers()
        handler.server.owner.release.wait(120)

    with FaultServer(stall) as server:
        llm = _llm(server.url)
        cancel = CancelToken()
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(llm.complete("Hi", cancel=cancel)))
        worker.start()
        assert server.received.wait(60)
        cancel.set()
        worker.join(60)  # a hang guard: without the interrupt it waits for the release
        assert not worker.is_alive() and not server.release.is_set()
        assert outcome[0].finish_reason is FinishReason.CANCELLED


def test_a_cancel_before_the_headers_is_a_cancelled_answer() -> None:
    """Not httpx's StreamClosed: the cancel lands before the response is read."""
    cancelled = threading.Event()

    def late_headers(handler: Handler, _body: dict[str, Any]) -> None:
        cancelled.wait(60)
        handler.answer("Hel", "lo")

    with FaultServer(late_headers) as server:
        llm = _llm(server.url)
        cancel = CancelToken()
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(llm.complete("Hi", cancel=cancel)))
        worker.start()
        assert server.received.wait(60)
        cancel.set()
        cancelled.set()
        worker.join(60)
        assert outcome and outcome[0].finish_reason is FinishReason.CANCELLED


def test_an_error_event_before_any_text_moves_to_another_server() -> None:
    def loading(handler: Handler, _body: dict[str, Any]) -> None:
        handler.stream_headers()
        handler.event({"error": {"code": 503, "message": "Loading model", "type": "unavailable"}})

    with FaultServer(loading) as busy, FaultServer(_ok) as fine:
        llm = _llm(busy.url, fine.url, model_kwargs={"routing": "round-robin"})
        answers = [llm.complete("Hi").text for _ in range(4)]
        assert answers == ["Hello"] * 4
        assert busy.completions >= 1 and fine.completions == 4


def test_an_error_event_after_text_keeps_the_text() -> None:
    def breaks(handler: Handler, _body: dict[str, Any]) -> None:
        handler.stream_headers()
        handler.token("Hel")
        handler.event({"error": {"code": 500, "message": "boom", "type": "server"}})

    with FaultServer(breaks) as server:
        with pytest.raises(ServerResponseError, match="boom") as caught:
            _llm(server.url).complete("Hi")
        assert caught.value.text == "Hel"
        assert server.completions == 1  # never generated twice


def test_one_bad_gateway_does_not_take_a_one_server_pool_offline() -> None:
    calls = 0

    def blip(handler: Handler, _body: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            handler.send_json({"error": {"code": 502, "message": "bad gateway"}}, 502)
        else:
            handler.answer("Hel", "lo")

    with FaultServer(blip) as server:
        llm = _llm(server.url)
        with pytest.raises(ServerUnavailableError, match="502"):
            llm.complete("Hi")  # the only server failed it: nowhere else to go
        # The next requests find the server down with no other to try: they probe /health
        # at once instead of failing, without contacting it, for a whole backoff.
        assert [llm.complete("Hi").text for _ in range(3)] == ["Hello"] * 3


def test_credentials_in_a_url_are_refused_not_logged() -> None:
    with pytest.raises(ConfigurationError, match="api_key") as caught:
        _llm("http://bob:sk-SECRET@127.0.0.1:1")
    assert "SECRET" not in str(caught.value)


def test_instances_with_other_context_windows_share_one_pool() -> None:
    with FaultServer(_ok) as server:
        small, large = _llm(server.url, context_window=64), _llm(server.url, context_window=256)
        assert small.loaded_model is large.loaded_model
        assert small.metadata.context_window == 64 and large.metadata.context_window == 256


def test_a_schema_that_admits_no_finite_value_never_reaches_the_server() -> None:
    """``{"$ref": "#"}`` would send a server's grammar compiler into endless recursion."""
    with FaultServer(_ok) as server:
        with pytest.raises(SchemaError, match="finite"):
            _llm(server.url).complete("Hi", json_schema={"$ref": "#"})
        assert server.completions == 0
