"""Download a GGUF model into the cache so that a crash can never leave a bad file there.

The bytes go to ``<target>.part`` first; only a complete file whose length, GGUF magic
bytes and (when given) SHA-256 check out is renamed to ``<target>``, atomically. An
interrupted download resumes from the ``.part`` file with an HTTP ``Range`` request (or
starts over when the server ignores ranges). A cross-process file lock makes concurrent
callers download once and share the result.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from attrs import frozen
from filelock import FileLock

from serapeum_source_url.errors import (
    ChecksumMismatchError,
    DownloadError,
    HTTPStatusError,
    NotAModelError,
)

GGUF_MAGIC = b"GGUF"
MIN_MODEL_BYTES = 64  # a GGUF header alone is larger than anything below this
CHUNK_BYTES = 1 << 20  # for hashing
# Bytes read from the network at a time. A read cut off by a dropped connection loses
# what it had buffered, so this bounds what a resume has to fetch twice.
READ_BYTES = 64 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes downloaded so far, total bytes) as the download advances."""


@frozen
class DownloadSettings:
    """Network behaviour: timeouts in seconds, and retries of transient failures."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff_seconds: float = 0.5  # doubled after each failed attempt


class _Transient(Exception):
    """A failure worth retrying (and resuming): dropped connection, timeout, 5xx."""


def download_model(
    url: str,
    target: Path,
    *,
    sha256: str | None = None,
    progress: bool | ProgressCallback | None = None,
    settings: DownloadSettings | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Return ``target`` holding the verified model from ``url``, downloading it if needed.

    A file already at ``target`` is used without any network request (it was verified
    before it was put there); with ``sha256`` it is checked again.
    """
    settings = settings or DownloadSettings()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            if sha256 is not None:
                _check_sha256(target, sha256, url)
            return target
        part = target.with_name(target.name + ".part")
        _fetch_with_retries(url, part, settings, session or requests.Session(), progress)
        try:
            _verify(part, url, sha256)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target


def _fetch_with_retries(
    url: str,
    part: Path,
    settings: DownloadSettings,
    session: requests.Session,
    progress: bool | ProgressCallback | None,
) -> None:
    failures: list[str] = []
    for attempt in range(settings.retries + 1):
        try:
            _fetch(url, part, settings, session, progress)
            return
        except _Transient as exc:
            failures.append(str(exc))
            if attempt < settings.retries:
                time.sleep(settings.backoff_seconds * 2**attempt)
    raise DownloadError(
        f"could not download {url} after {settings.retries + 1} attempts ({'; '.join(failures)}). "
        "Check the URL and your connection; run again to resume from the bytes already "
        "received",
        url=url,
    )


def _fetch(
    url: str,
    part: Path,
    settings: DownloadSettings,
    session: requests.Session,
    progress: bool | ProgressCallback | None,
) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(settings.connect_timeout, settings.read_timeout),
            allow_redirects=True,
        )
    except requests.exceptions.RequestException as exc:
        raise _Transient(f"could not connect: {exc}") from exc
    with response:
        total, mode = _check_response(response, url, part, have)
        if mode == "wb":
            have = 0
        report = _progress_reporter(progress, total, have, part.name.removesuffix(".part"))
        try:
            with part.open(mode) as sink:
                for chunk in response.iter_content(READ_BYTES):
                    sink.write(chunk)
                    have += len(chunk)
                    report(have)
        except requests.exceptions.RequestException as exc:
            raise _Transient(f"the connection broke after {have} of {total} bytes: {exc}") from exc
        finally:
            report(None)
    if have != total:
        raise _Transient(f"the server sent {have} of {total} bytes")


def _check_response(
    response: requests.Response, url: str, part: Path, have: int
) -> tuple[int, str]:
    """Classify the answer; returns (total size of the file, file mode to write with)."""
    status = response.status_code
    if status == 416:  # our partial file does not fit what the server has now: start over
        part.unlink(missing_ok=True)
        raise _Transient("the server refused to resume (HTTP 416); starting over")
    if status in (401, 403):
        raise HTTPStatusError(
            f"{url} answered HTTP {status}: the file needs authorisation or is not shared "
            "publicly; use a URL that is downloadable without logging in",
            url=url,
            status=status,
        )
    if status == 404:
        raise HTTPStatusError(
            f"{url} answered HTTP 404: no file there; check the URL", url=url, status=status
        )
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status} from the server")
    if status not in (200, 206):
        raise HTTPStatusError(f"{url} answered HTTP {status}", url=url, status=status)
    if "text/html" in response.headers.get("Content-Type", "").lower():
        raise NotAModelError(
            f"{url} sent an HTML page, not a model file (a login or error page?); use the "
            "direct download link of the .gguf file",
            url=url,
        )
    if status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start != have:
            part.unlink(missing_ok=True)
            raise _Transient(f"the server resumed at byte {start}, not {have}; starting over")
        mode = "ab"
    else:  # 200: the whole file (a server without Range support restarts from zero)
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise NotAModelError(
                f"{url} gave no Content-Length, so a complete download cannot be told from a "
                "cut-off one; use a server or mirror that sends the file size",
                url=url,
            )
        total, mode = int(length), "wb"
    if total < MIN_MODEL_BYTES:
        raise NotAModelError(f"{url} is only {total} bytes: too small to be a model", url=url)
    return total, mode


def _content_range(header: str) -> tuple[int, int]:
    # "bytes 100-999/1000"
    try:
        unit, _, rest = header.partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.partition("-")[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, int(total)
    except ValueError as exc:
        raise _Transient(f"unreadable Content-Range {header!r}") from exc


def _verify(part: Path, url: str, sha256: str | None) -> None:
    with part.open("rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise NotAModelError(
            f"{url} did not send a GGUF model (it starts with {head!r}); use the direct link "
            "to a .gguf file",
            url=url,
        )
    if sha256 is not None:
        _check_sha256(part, sha256, url)


def _check_sha256(path: Path, expected: str, url: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected.strip().lower():
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"the file from {url} has SHA-256 {actual}, not the expected {expected}; it was "
            "deleted. Check the checksum, or whether the URL now serves a different file",
            url=url,
        )


def _progress_reporter(
    progress: bool | ProgressCallback | None, total: int, start: int, name: str
) -> Callable[[int | None], None]:
    """A function called with the byte count (None at the end) that shows progress."""
    if callable(progress):
        callback = progress

        def report_to_callback(done: int | None) -> None:
            if done is not None:
                callback(done, total)

        return report_to_callback
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return lambda done: None
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        leave=True,
    )
    last = start

    def report_to_bar(done: int | None) -> None:
        nonlocal last
        if done is None:
            bar.close()
        else:
            bar.update(done - last)
            last = done

    return report_to_bar
