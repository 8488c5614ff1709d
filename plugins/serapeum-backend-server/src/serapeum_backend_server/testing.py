"""Start and stop real inference servers for tests and benchmarks.

Two kinds: llama-cpp-python's ``llama_cpp.server`` (always available where llama-cpp-python
has its ``[server]`` extra) and llama.cpp's own ``llama-server`` (built by
``scripts/build-llama-server.sh``; found through ``SERAPEUM_LLAMA_SERVER``). Each runs as a
child process on 127.0.0.1 with its output in a log file, so a crash or a slow start shows
its own words in the error instead of hanging the test run.

Stdlib and httpx only: tests of the server backend must not load the in-process engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx
from attrs import define

__all__ = [
    "BUILD_SCRIPT",
    "LLAMA_SERVER_ENV",
    "RunningServer",
    "free_port",
    "llama_server_binary",
    "start_llama_cpp_python_server",
    "start_llama_server",
]

ServerKind = Literal["llama-cpp-python", "llama-server"]
_Command = Callable[[int], list[str]]  # the command line for a port

LLAMA_SERVER_ENV = "SERAPEUM_LLAMA_SERVER"
BUILD_SCRIPT = "scripts/build-llama-server.sh"

_POLL_SECONDS = 0.1
_LOG_TAIL_CHARS = 4000
_PORT_RETRIES = 3

# llama_cpp.server's settings are pydantic BaseSettings (case-insensitive, no prefix) and its
# __main__ reads HOST, PORT and CONFIG_FILE directly: a stray variable in the test
# environment (PORT, MODEL, API_KEY, VERBOSE...) would silently change the server. Field
# names from llama_cpp/server/settings.py (0.3.36).
_LLAMA_CPP_PYTHON_ENV = frozenset(
    {
        "config_file",
        "api_key", "cache", "cache_size", "cache_type", "chat_format", "chat_template_kwargs",
        "clip_model_path", "disable_ping_events", "draft_model", "draft_model_num_pred_tokens",
        "embedding", "flash_attn", "hf_model_repo_id", "hf_pretrained_model_name_or_path",
        "hf_tokenizer_config_path", "host", "interrupt_requests", "kv_overrides",
        "last_n_tokens_size", "logits_all", "lora_base", "lora_path", "main_gpu", "model",
        "model_alias", "mul_mat_q", "n_batch", "n_ctx", "n_gpu_layers", "n_threads",
        "n_threads_batch", "n_ubatch", "numa", "offload_kqv", "port", "root_path",
        "rope_freq_base", "rope_freq_scale", "rope_scaling_type", "rpc_servers", "seed",
        "split_mode", "ssl_certfile", "ssl_keyfile", "tensor_split", "type_k", "type_v",
        "use_mlock", "use_mmap", "verbose", "vocab_only", "yarn_attn_factor", "yarn_beta_fast",
        "yarn_beta_slow", "yarn_ext_factor", "yarn_orig_ctx",
    }
)  # fmt: skip


@define
class RunningServer:
    """A server child process and where to reach it; ``stop()`` it (or use ``with``)."""

    url: str
    process: subprocess.Popen[bytes]
    kind: ServerKind
    port: int
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: the client sees connections drop mid-request."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate politely; kill when it does not end within ``timeout`` seconds."""
        if self.alive:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return _tail(self.log_path, chars)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A port nothing listens on now (the OS's pick for port 0); racy, hence the retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_binary() -> str | None:
    """The ``llama-server`` named by ``SERAPEUM_LLAMA_SERVER`` when it is an executable file."""
    path = os.environ.get(LLAMA_SERVER_ENV)
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def start_llama_cpp_python_server(
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int = 512,
    n_threads: int = 1,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 120.0,
    api_key: str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
) -> RunningServer:
    """Run ``python -m llama_cpp.server`` on the model; return once ``/v1/models`` answers 200.

    ``tls=(certificate, key)`` serves HTTPS (uvicorn's ``--ssl_certfile``/``--ssl_keyfile``);
    the readiness check then trusts that certificate.

    One thread by default: tests run several servers on a couple of cores. Options are the
    pydantic field names of llama_cpp/server/settings.py (``--n_ctx``, ``--api_key``...).
    Raises RuntimeError (with the log's tail) when the process exits or the timeout passes.
    The log goes to a new folder in ``log_dir`` (default: the system's temp folder).
    """

    def command(chosen: int) -> list[str]:
        args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", os.fspath(model_path),
            "--host", "127.0.0.1",
            "--port", str(chosen),
            "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads),
            "--n_threads_batch", str(n_threads),
        ]  # fmt: skip
        if api_key is not None:
            args += ["--api_key", api_key]
        if tls is not None:
            args += ["--ssl_certfile", os.fspath(tls[0]), "--ssl_keyfile", os.fspath(tls[1])]
        return args + list(extra_args)

    env = {k: v for k, v in os.environ.items() if k.lower() not in _LLAMA_CPP_PYTHON_ENV}
    return _start(
        "llama-cpp-python",
        command,
        "/v1/models",
        port,
        env,
        startup_timeout,
        api_key,
        log_dir,
        certificate=None if tls is None else os.fspath(tls[0]),
    )


def start_llama_server(
    binary: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int = 1024,
    slots: int = 1,
    n_threads: int = 1,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 120.0,
    api_key: str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> RunningServer:
    """Run llama.cpp's ``llama-server``; return once ``/health`` answers 200.

    ``n_ctx`` is ``-c``, the whole KV cache: with ``slots`` given explicitly the KV cache is
    not unified, so each slot (each concurrent request) gets ``n_ctx // slots`` tokens
    (tools/server/README.md, ``-c``, ``-np``, ``--kv-unified``). Raises RuntimeError (with
    the log's tail) when the process exits or the timeout passes.
    """

    def command(chosen: int) -> list[str]:
        args = [
            os.fspath(binary),
            "-m", os.fspath(model_path),
            "--host", "127.0.0.1",
            "--port", str(chosen),
            "-c", str(n_ctx),
            "-np", str(slots),
            "-t", str(n_threads),
            "-tb", str(n_threads),
            "--no-webui",
        ]  # fmt: skip
        if api_key is not None:
            args += ["--api-key", api_key]
        return args + list(extra_args)

    # llama-server reads LLAMA_ARG_* (and LLAMA_API_KEY) for any option not on the command line.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLAMA_ARG_") and k != "LLAMA_API_KEY"
    }
    return _start("llama-server", command, "/health", port, env, startup_timeout, api_key, log_dir)


def _start(
    kind: ServerKind,
    command: _Command,
    ready_path: str,
    port: int | None,
    env: Mapping[str, str],
    startup_timeout: float,
    api_key: str | None,
    log_dir: str | os.PathLike[str] | None,
    certificate: str | None = None,
) -> RunningServer:
    """Launch, wait for readiness; retry on another port when the OS's pick was taken."""
    attempts = 1 if port is not None else _PORT_RETRIES
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        scheme = "http" if certificate is None else "https"
        server = _launch(kind, command(chosen), chosen, env, log_dir, scheme)
        try:
            _wait_ready(server, ready_path, startup_timeout, api_key, certificate)
        except _PortTaken:
            if attempt + 1 == attempts:
                raise _startup_error(server, "its port was taken") from None
            continue
        return server
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    pass


def _launch(
    kind: ServerKind,
    args: Iterable[str],
    port: int,
    env: Mapping[str, str],
    log_dir: str | os.PathLike[str] | None,
    scheme: str = "http",
) -> RunningServer:
    # One folder per launch (mkdtemp), inside log_dir when given (say, a test's tmp_path).
    folder = Path(tempfile.mkdtemp(prefix=f"serapeum-{kind}-", dir=log_dir))
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    return RunningServer(
        url=f"{scheme}://127.0.0.1:{port}", process=process, kind=kind, port=port, log_path=log_path
    )


def _wait_ready(
    server: RunningServer,
    ready_path: str,
    startup_timeout: float,
    api_key: str | None,
    certificate: str | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    deadline = time.monotonic() + startup_timeout
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=certificate) if certificate is not None else True
    )
    with httpx.Client(base_url=server.url, headers=headers, timeout=2.0, verify=verify) as client:
        while True:
            if not server.alive:
                server.process.wait()
                tail = server.log_tail().lower()
                if "address already in use" in tail or "errno 98" in tail:
                    raise _PortTaken
                raise _startup_error(server, f"it exited with status {server.process.returncode}")
            try:
                if client.get(ready_path).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                server.kill()
                raise _startup_error(server, f"not ready after {startup_timeout:g} s")
            time.sleep(_POLL_SECONDS)


def _startup_error(server: RunningServer, problem: str) -> RuntimeError:
    return RuntimeError(
        f"{server.kind} server did not start: {problem}. "
        f"Log: {server.log_path}\n--- last lines ---\n{server.log_tail()}"
    )


def _tail(path: Path, chars: int) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return data[-chars:].decode("utf-8", errors="replace")
