"""The URL source against a real loopback HTTP server: every fault ends verified or in a clear error."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serapeum.llama_cpp.testing.http_server import Behaviour
from serapeum_source_url import (
    ChecksumMismatchError,
    DownloadError,
    DownloadSettings,
    HTTPStatusError,
    NotAModelError,
    cached_path,
    download_model,
)
from serapeum_source_url.download import READ_BYTES

FAST = DownloadSettings(retries=3, backoff_seconds=0.01, read_timeout=5)


def _leftovers(target: Path) -> list[str]:
    """Anything at the final path, plus any partial file (a lock file is harmless)."""
    return sorted(
        p.name for p in target.parent.glob(target.name + "*") if not p.name.endswith(".lock")
    )


def test_full_download(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    path = download_model(url, cached_path(url), settings=FAST)
    assert path.read_bytes() == model_bytes
    assert path.is_relative_to(cache_root)
    [request] = http_server.requests_for("/tiny.gguf")
    assert request.range is None and request.body_bytes == len(model_bytes)


def test_cache_hit_makes_no_request(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    first = download_model(url, cached_path(url), settings=FAST)
    requests_before = len(http_server.log)
    assert download_model(url, cached_path(url), settings=FAST) == first
    assert len(http_server.log) == requests_before


def test_resume_after_a_dropped_connection_transfers_only_the_rest(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes, drop_after=200_000)
    path = download_model(url, cached_path(url), settings=FAST)
    assert path.read_bytes() == model_bytes
    first, second = http_server.requests_for("/tiny.gguf")
    assert first.body_bytes == 200_000 and first.range is None
    assert second.status == 206 and second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").removesuffix("-"))
    # what the first connection delivered is kept, up to the one read it cut short
    assert 200_000 - READ_BYTES <= resumed_at <= 200_000
    assert second.body_bytes == len(model_bytes) - resumed_at


def test_server_without_range_support_starts_over_cleanly(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes, drop_after=200_000, ranges=False)
    path = download_model(url, cached_path(url), settings=FAST)
    assert path.read_bytes() == model_bytes
    second = http_server.requests_for("/tiny.gguf")[1]
    assert second.status == 200 and second.body_bytes == len(model_bytes)


def test_wrong_length_once_is_resumed(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve(
        "/tiny.gguf", model_bytes, claimed_length=len(model_bytes) + 5000, claim_times=1
    )
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == model_bytes


def test_a_server_that_always_cuts_the_body_short_ends_in_a_clear_error(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve(
        "/tiny.gguf", model_bytes, claimed_length=len(model_bytes) + 5000, ranges=False
    )
    target = cached_path(url)
    with pytest.raises(DownloadError, match="after 4 attempts"):
        download_model(url, target, settings=FAST)
    assert not target.exists()


def test_sha256_match_and_mismatch(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    target = cached_path(url)
    with pytest.raises(ChecksumMismatchError, match="not the expected"):
        download_model(url, target, sha256="0" * 64, settings=FAST)
    assert _leftovers(target) == []
    good = hashlib.sha256(model_bytes).hexdigest()
    assert download_model(url, target, sha256=good, settings=FAST).read_bytes() == model_bytes


@pytest.mark.parametrize("status", [404, 401, 403])
def test_error_statuses_are_clear_and_not_retried(
    http_server: Any, cache_root: Path, status: int
) -> None:
    url = http_server.serve("/missing.gguf", b"", status=status)
    target = cached_path(url)
    with pytest.raises(HTTPStatusError, match=f"HTTP {status}") as info:
        download_model(url, target, settings=FAST)
    assert info.value.status == status
    assert len(http_server.requests_for("/missing.gguf")) == 1
    assert _leftovers(target) == []


def test_server_error_then_success(http_server: Any, model_bytes: bytes, cache_root: Path) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes, fail_times=2)
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == model_bytes
    assert [r.status for r in http_server.requests_for("/tiny.gguf")] == [500, 500, 200]


def test_html_page_with_200_is_refused(http_server: Any, cache_root: Path) -> None:
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>" * 10
    url = http_server.serve("/login.gguf", page, content_type="text/html; charset=utf-8")
    target = cached_path(url)
    with pytest.raises(NotAModelError, match="HTML page"):
        download_model(url, target, settings=FAST)
    assert _leftovers(target) == []


def test_non_gguf_body_with_a_binary_type_is_refused(http_server: Any, cache_root: Path) -> None:
    url = http_server.serve("/weights.gguf", b"PK\x03\x04" + b"\x00" * 5000)
    target = cached_path(url)
    with pytest.raises(NotAModelError, match="did not send a GGUF model"):
        download_model(url, target, settings=FAST)
    assert _leftovers(target) == []


def test_slow_body_times_out_into_a_clear_error(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/slow.gguf", model_bytes, delay_per_chunk=1.0)
    target = cached_path(url)
    settings = DownloadSettings(retries=1, backoff_seconds=0.01, read_timeout=0.2)
    with pytest.raises(DownloadError, match="could not download"):
        download_model(url, target, settings=settings)
    assert not target.exists()


def test_redirects_are_followed_and_cached_under_the_original_url(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    http_server.serve("/real/tiny.gguf", model_bytes)
    http_server.behaviours["/go"] = Behaviour(redirect_to="/real/tiny.gguf")
    url = http_server.url("/go")
    path = download_model(url, cached_path(url), settings=FAST)
    assert path.read_bytes() == model_bytes and path == cached_path(url)


def test_connection_refused_is_a_clear_error(cache_root: Path) -> None:
    url = "http://127.0.0.1:9/nothing-listens-here.gguf"
    with pytest.raises(
        DownloadError, match=r"after 1 attempt: connection refused by 127\.0\.0\.1:9"
    ):
        download_model(url, cached_path(url), settings=DownloadSettings(retries=0))


def test_progress_callback_sees_the_bytes_arrive(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    seen: list[tuple[int, int]] = []
    download_model(url, cached_path(url), settings=FAST, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(model_bytes), len(model_bytes))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_same_file_name_on_two_urls_never_collides(cache_root: Path) -> None:
    a = cached_path("https://host/org-one/repo/resolve/main/model.Q4_K_M.gguf")
    b = cached_path("https://host/org-two/repo/resolve/main/model.Q4_K_M.gguf")
    assert a != b and a.name == b.name == "model.Q4_K_M.gguf"


@pytest.mark.parametrize(
    "url",
    [
        "http://host/../../../../etc/passwd",
        "http://host/a/..%2F..%2F..%2Fevil.gguf",
        "http://host/%2E%2E",
        "http://host/",
        "http://host/dir/.hidden.gguf",
        "http://host/C:%5Cwindows%5Cevil.gguf",
    ],
)
def test_urls_never_write_outside_the_cache(cache_root: Path, url: str) -> None:
    path = cached_path(url)
    assert path.resolve().is_relative_to((cache_root / "models" / "url").resolve())
    assert "/" not in path.name and "\\" not in path.name and not path.name.startswith(".")


DOWNLOAD_IN_A_PROCESS = """
import sys
from serapeum_source_url import DownloadSettings, cached_path, download_model
url = sys.argv[1]
print(download_model(url, cached_path(url), settings=DownloadSettings(backoff_seconds=0.01)))
"""


def test_two_processes_download_once(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes, delay_per_chunk=0.05)
    env = {**os.environ, "SERAPEUM_CACHE_DIR": str(cache_root)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DOWNLOAD_IN_A_PROCESS, url],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs[0] == outputs[1] == str(cached_path(url))
    assert Path(outputs[0]).read_bytes() == model_bytes
    assert len(http_server.requests_for("/tiny.gguf")) == 1  # one download, shared


def test_a_killed_download_leaves_no_model_and_the_next_run_resumes(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    import signal
    import time

    url = http_server.serve("/tiny.gguf", model_bytes, delay_per_chunk=0.3)
    target = cached_path(url)
    env = {**os.environ, "SERAPEUM_CACHE_DIR": str(cache_root)}
    victim = subprocess.Popen([sys.executable, "-c", DOWNLOAD_IN_A_PROCESS, url], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(r.body_bytes >= 2 * 64 * 1024 for r in http_server.log):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        part = target.with_name(target.name + ".part")
        while not (part.exists() and part.stat().st_size > 0):
            assert time.monotonic() < deadline, "nothing was written"
            time.sleep(0.02)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert not target.exists()  # a crash never leaves a file at the final path
    kept = part.stat().st_size
    http_server.behaviours["/tiny.gguf"].delay_per_chunk = 0.0
    assert download_model(url, target, settings=FAST).read_bytes() == model_bytes
    resumed = http_server.log[-1]
    assert resumed.range == f"bytes={kept}-" and resumed.body_bytes == len(model_bytes) - kept
