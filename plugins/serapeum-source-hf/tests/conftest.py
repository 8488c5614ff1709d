"""A loopback fake of the Hugging Face Hub, and a Hub client pointed at it with a temp cache.

The fake answers the endpoints the installed ``huggingface_hub`` really calls:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}``: file metadata
  (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``, ``Content-Length``) and content;
* ``GET /api/models/{repo_id}/tree/{revision}?recursive=...``: the file listing
  behind ``HfApi.list_repo_files``;

and errors as the Hub sends them (``X-Error-Code``: ``RepoNotFound``, ``GatedRepo``,
``RevisionNotFound``, ``EntryNotFound``). Every request is logged so tests can assert
what went over the wire. Nothing is mocked inside ``huggingface_hub``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


def commit_id(label: str) -> str:
    """A deterministic 40-hex commit hash for a readable label."""
    return hashlib.sha1(label.encode()).hexdigest()


@dataclass
class FakeRepo:
    """One repository: named revisions point at commits, commits map paths to bytes."""

    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: bool = False
    lfs: bool = True  # False: files are plain git blobs, their ETag a git SHA-1, not a SHA-256

    def add_commit(self, label: str, files: dict[str, bytes], *refs: str) -> str:
        commit = commit_id(label)
        self.commits[commit] = dict(files)
        for ref in refs:
            self.refs[ref] = commit
        return commit

    def commit_for(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str


class FakeHub:
    """The repositories the server serves, and the log of the requests it received."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self.endpoint = ""

    def repo(self, repo_id: str, *, gated: bool = False) -> FakeRepo:
        repo = self.repos.setdefault(repo_id, FakeRepo())
        repo.gated = gated
        return repo

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append(LoggedRequest(method, path))

    def downloads(self) -> list[str]:
        """Paths of file-content requests (GET on /resolve/), the ones that move bytes."""
        with self._lock:
            return [r.path for r in self.requests if r.method == "GET" and "/resolve/" in r.path]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._handle(send_body=False)

        def do_GET(self) -> None:
            self._handle(send_body=True)

        # -- responses ------------------------------------------------------------------
        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            send_body: bool = True,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def _error(
            self, status: int, code: str, message: str, send_body: bool, **extra: str
        ) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"X-Error-Code": code, "X-Error-Message": message, **extra}
            headers["Content-Type"] = "application/json"
            self._send(status, body, headers, send_body)

        # -- routing --------------------------------------------------------------------
        def _handle(self, send_body: bool) -> None:
            parts = urlsplit(self.path)
            hub.log(self.command, parts.path)
            segments = [unquote(s) for s in parts.path.strip("/").split("/")]
            if segments[:2] == ["api", "models"] and "tree" in segments:
                at = segments.index("tree")
                repo_id = "/".join(segments[2:at])
                revision = segments[at + 1] if len(segments) > at + 1 else "main"
                self._tree(repo_id, revision, parse_qs(parts.query), send_body)
            elif "resolve" in segments:
                at = segments.index("resolve")
                repo_id = "/".join(segments[:at])
                revision = segments[at + 1]
                filename = "/".join(segments[at + 2 :])
                self._resolve(repo_id, revision, filename, send_body)
            else:
                self._send(404, b"not found", {}, send_body)

        def _repo(
            self, repo_id: str, revision: str, send_body: bool
        ) -> tuple[FakeRepo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                # The Hub answers 401 (not 404) for unknown repos to unauthenticated clients.
                self._error(401, "RepoNotFound", "Repository not found", send_body)
                return None
            if repo.gated and self.headers.get("Authorization") != "Bearer good-token":
                self._error(
                    401,
                    "GatedRepo",
                    "Access to this model is restricted. You must have access to it and be authenticated.",
                    send_body,
                )
                return None
            commit = repo.commit_for(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
                return None
            return repo, commit

        def _resolve(self, repo_id: str, revision: str, filename: str, send_body: bool) -> None:
            found = self._repo(repo_id, revision, send_body)
            if found is None:
                return
            repo, commit = found
            content = repo.commits[commit].get(filename)
            if content is None:
                self._error(
                    404,
                    "EntryNotFound",
                    f"{filename} does not exist on {revision}",
                    send_body,
                    **{"X-Repo-Commit": commit},
                )
                return
            if repo.lfs:
                etag = hashlib.sha256(content).hexdigest()
                headers = {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))}
            else:  # git's blob id, as the Hub sends for files not stored in LFS
                etag = hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()
                headers = {}
            headers |= {
                "X-Repo-Commit": commit,
                "ETag": f'"{etag}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            self._send(200, content, headers, send_body)

        def _tree(
            self, repo_id: str, revision: str, query: dict[str, list[str]], send_body: bool
        ) -> None:
            found = self._repo(repo_id, revision, send_body)
            if found is None:
                return
            repo, commit = found
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries: list[dict[str, object]] = []
            folders: set[str] = set()
            for path, content in sorted(repo.commits[commit].items()):
                if "/" in path and not recursive:
                    folders.add(path.split("/", 1)[0])
                    continue
                if recursive:
                    parents = path.split("/")[:-1]
                    folders.update("/".join(parents[: i + 1]) for i in range(len(parents)))
                entries.append(
                    {
                        "type": "file",
                        "path": path,
                        "size": len(content),
                        "oid": hashlib.sha1(content).hexdigest(),
                    }
                )
            entries += [
                {"type": "directory", "path": p, "oid": commit_id(p), "size": 0}
                for p in sorted(folders)
            ]
            body = json.dumps(entries).encode()
            self._send(200, body, {"Content-Type": "application/json"}, send_body)

    return Handler


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A running fake Hub on 127.0.0.1 (a free port), with an empty set of repositories."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def hub_env(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Point the Hub client at the fake Hub with an empty temp cache and no token.

    ``huggingface_hub.constants`` copies ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and
    ``HF_HUB_OFFLINE`` at import time, and the library reads those constants (not the
    environment) on every call; so both are set: the environment for anything that reads
    it (``HF_TOKEN`` is read from it on each call), the constants for the client itself.
    ``test_environment_variables_in_a_fresh_process`` checks the plain env-var path.
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    endpoint = fake_hub.endpoint
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return fake_hub


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the Hub client to offline mode as ``HF_HUB_OFFLINE=1`` at import would."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
