"""Real servers on 127.0.0.1 for the server backend's tests.

Tier 1: ``python -m llama_cpp.server`` (the ``server`` extra of the pinned llama-cpp-python).
Tier 2: llama.cpp's own ``llama-server`` when ``SERAPEUM_LLAMA_SERVER`` names the binary
(build it with ``scripts/build-llama-server.sh``); its tests skip otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from serapeum_backend_server.testing import (
    RunningServer,
    llama_server_binary,
    start_llama_cpp_python_server,
    start_llama_server,
)

KINDS = ["llama-cpp-python", "llama-server"]
# Without this llama-cpp-python's server cuts a running stream short when the next request
# arrives (its default); the fleet tests send requests concurrently.
QUEUE_REQUESTS = ("--interrupt_requests", "False")

ServerFactory = Callable[..., RunningServer]


def _factory(kind: str, stack: ExitStack) -> ServerFactory:
    if kind == "llama-server":
        binary = llama_server_binary()
        if binary is None:
            pytest.skip(
                "llama-server tier: set SERAPEUM_LLAMA_SERVER to a llama-server binary "
                "(scripts/build-llama-server.sh builds one from the pinned sdist)"
            )

        def start_native(model: Path, *, n_ctx: int = 1024, slots: int = 2) -> RunningServer:
            return stack.enter_context(
                start_llama_server(binary, model, n_ctx=n_ctx * slots, slots=slots)
            )

        return start_native

    def start_python(model: Path, *, n_ctx: int = 1024, slots: int = 1) -> RunningServer:
        del slots  # one request at a time; the rest queue
        return stack.enter_context(
            start_llama_cpp_python_server(model, n_ctx=n_ctx, extra_args=QUEUE_REQUESTS)
        )

    return start_python


@pytest.fixture(scope="module", params=KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """The kind of server the module's tests run against (llama-server: when built)."""
    if request.param == "llama-server" and llama_server_binary() is None:
        pytest.skip(
            "llama-server tier: set SERAPEUM_LLAMA_SERVER to a llama-server binary "
            "(scripts/build-llama-server.sh builds one from the pinned sdist)"
        )
    return str(request.param)


@pytest.fixture(scope="module")
def start_server(server_kind: str) -> Iterator[ServerFactory]:
    """Start servers of this module's kind; all are stopped when the module ends."""
    with ExitStack() as stack:
        yield _factory(server_kind, stack)


@pytest.fixture(scope="module")
def tiny_pair(start_server: ServerFactory, tiny_model_path: Path) -> list[RunningServer]:
    """Two servers on the tiny model."""
    return [start_server(tiny_model_path), start_server(tiny_model_path)]
