"""Download a GGUF model into the cache so that only a verified, complete file ever lands there.

The bytes go to ``<target>.part`` first. Only a complete file that passes every check is
renamed to ``<target>`` (atomically): its GGUF structure (``serapeum.core.gguf``, which
also refuses a file cut short with a matching, too-small ``Content-Length``), the
expected SHA-256 when one is given, and the engine's own check (``verify``, a checked
load) when the caller passes one. A refused download is deleted; nothing is installed.

An interrupted download resumes from the ``.part`` file with ``Range`` and ``If-Range``:
the first response's strong ``ETag`` (or ``Last-Modified``) is kept in
``<target>.part.meta``, so a file that changed on the server in between starts over
instead of being spliced. Without a validator there is no resume: a partial file
is started over. Transfers are requested uncompressed (``Accept-Encoding: identity``);
a server that compresses anyway is decoded, its wire bytes counted against
``Content-Length``, and never resumed. A cross-process file lock makes concurrent
callers download once and share the result. A server that cannot be reached at all
(refused, unknown host) is tried twice, not for minutes; TLS and URL errors not again.

What a hostile or broken server can do is bounded: no more bytes are written than the
response announced (a body that goes on past its ``Content-Length``, say chunked and
endless, is cut off and discarded; a compressed one may not inflate past
``MAX_INFLATION`` times its wire size); a body that does not start with the GGUF magic
is refused at its first bytes; a file larger than the free disk space is refused before
a byte is written. The read timeout bounds each wait for data, and a watchdog
(``stall.py``) ends a transfer, headers included, whose speed stays below
``DownloadSettings.min_bytes_per_second`` for ``slow_seconds`` (1 KiB/s for 30 s by
default), or whose headers take longer than the connect and read timeouts together: a
server dripping a byte a second is dropped after about 30 s (70 s in its headers), and
tried once more (resuming). A server that sends just above that floor is a slow server, not a hung
one, and is waited for; set ``max_seconds`` to bound a whole transfer.

Nothing placed in the cache can redirect the download: a symbolic link, FIFO or device
at ``<target>.part`` or ``.part.meta`` is removed, not written through or opened
(``part_files.py``).

A file already at ``<target>`` is never deleted here: a SHA-256 that does not match it
raises ``ChecksumMismatchError`` and keeps it (the message says how to remove it).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from attrs import frozen
from filelock import FileLock

from serapeum.core.cache_dir import ensure_cache_directory
from serapeum.core.errors import CacheDirectoryError as CoreCacheDirectoryError
from serapeum.core.errors import MalformedGGUFError, ModelFileError, NotGGUFError, SerapeumError
from serapeum.core.gguf import check_gguf
from serapeum.core.model_files import note_rename, require_regular_file, sha256_of
from serapeum.core.redact import redact_logger, redact_text, redact_url
from serapeum_source_url.errors import (
    CacheDirectoryError,
    ChecksumMismatchError,
    DownloadError,
    HTTPStatusError,
    MalformedModelError,
    NotAModelError,
)
from serapeum_source_url.part_files import (
    Resume,
    meta_path,
    open_part,
    part_size,
    read_resume,
    write_resume,
)
from serapeum_source_url.stall import Watchdog, watched_session

GGUF_MAGIC = b"GGUF"
MIN_MODEL_BYTES = 64  # a GGUF header alone is larger than anything below this
# Bytes read from the network at a time. A read cut off by a dropped connection loses
# what it had buffered, so this bounds what a resume has to fetch twice.
READ_BYTES = 64 * 1024

# The HTTP client's loggers: their DEBUG lines quote request paths with query strings.
CLIENT_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes downloaded so far, total bytes) as the download advances."""

Verifier = Callable[[Path], None]
"""The engine's check of a complete file (``ModelRequest.verify_file``); raises to refuse it."""


@frozen
class DownloadSettings:
    """Network behaviour: timeouts in seconds, and retries of transient failures."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff_seconds: float = 0.5  # doubled after each failed attempt
    # The watchdog: a transfer (headers included) averaging less than this over any
    # ``slow_seconds`` is ended (0 turns it off); ``max_seconds`` bounds a whole attempt.
    min_bytes_per_second: float = 1024.0
    slow_seconds: float = 30.0
    max_seconds: float | None = None


@frozen
class _Plan:
    """How to read one response: the file's size, whether to append, what to remember."""

    total: int
    append: bool
    resume: Resume | None  # None: this transfer cannot be resumed (no validator, compressed)
    compressed: bool
    wire_length: int


# Attempts at reaching a server that refuses connections or cannot be resolved, or that
# the watchdog found too slow: a network blip is worth one more try, a wrong host or
# port (or a server dripping bytes) is not worth minutes.
CONNECT_ATTEMPTS = 2
# A compressed body may decode to at most this many times its wire size (a gzip bomb
# inflates a thousandfold; model weights barely compress).
MAX_INFLATION = 100


class _Transient(Exception):
    """A failure worth retrying (and resuming): dropped connection, timeout, 5xx.

    ``hint`` says what the user should check when every attempt failed this way.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class _Unreachable(_Transient):
    """No connection could be made (refused, unknown host) or the watchdog ended a
    transfer that hardly moved: retried, but not for long."""


def download_model(
    url: str,
    target: Path,
    *,
    sha256: str | None = None,
    progress: bool | ProgressCallback | None = None,
    settings: DownloadSettings | None = None,
    session: requests.Session | None = None,
    verify: Verifier | None = None,
) -> Path:
    """Return ``target`` holding the verified model from ``url``, downloading it if needed.

    A file already at ``target`` is used without any network request (it was verified
    before it was put there); with ``sha256`` it is checked again, and kept if it does
    not match. ``verify`` runs on a new download before it is installed.
    """
    settings = settings or DownloadSettings()
    for logger in CLIENT_LOGGERS:
        redact_logger(logger)
    _prepare_directory(target.parent, url)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire()
    except OSError as error:
        raise _cache_error(target.parent, error, url) from error
    try:
        if target.exists():
            _require_cached_file(target, url)
            if sha256 is not None:
                _check_cached_sha256(target, sha256, url)
            return target
        part = _part_path(target)
        try:
            _fetch_with_retries(url, part, settings, session or watched_session(), progress)
        except DownloadError:
            raise
        except OSError as error:  # writing the .part: disk full, permissions changed...
            raise _cache_error(part, error, url) from error
        _install(url, part, target, sha256, verify)
        return target
    finally:
        lock.release()


def _require_cached_file(target: Path, url: str) -> None:
    """What is at the final path must be a regular file (a directory or FIFO placed
    there is reported, never used or removed)."""
    try:
        require_regular_file(target, what="cached model file")
    except ModelFileError as error:
        raise CacheDirectoryError(
            f"{error} It is in the way of the download of {redact_url(url)}: move it away "
            "and run again",
            url=url,
        ) from error


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _meta_path(part: Path) -> Path:
    return meta_path(part)


def _prepare_directory(directory: Path, url: str) -> None:
    try:
        ensure_cache_directory(directory)
    except CoreCacheDirectoryError as error:
        raise CacheDirectoryError(str(error), url=url) from error


def _cache_error(path: Path, error: OSError, url: str) -> CacheDirectoryError:
    reason = error.strerror or type(error).__name__
    return CacheDirectoryError(
        f"cannot write {path} while downloading {redact_url(url)}: {reason}. Set "
        "SERAPEUM_CACHE_DIR to a writable directory with enough free space (or fix the "
        "permissions of the cache)",
        url=url,
    )


def _discard(part: Path) -> None:
    """Remove what a refused or unusable download left (the bytes and what they came from)."""
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _install(
    url: str, part: Path, target: Path, sha256: str | None, verify: Verifier | None
) -> None:
    """Check the complete ``.part`` file and rename it to ``target``; delete it if refused."""
    try:
        _verify(part, url, sha256, verify)
    except SerapeumError as error:
        _discard(part)
        if not isinstance(error, DownloadError):  # the engine's own verdict, kept as raised
            error.add_note(
                f"The file downloaded from {redact_url(url)} was refused and deleted; nothing "
                f"was installed at {target}."
            )
        raise
    before = os.stat(part)
    os.replace(part, target)
    note_rename(before, target)  # a SHA-256 taken of the .part still counts
    _meta_path(part).unlink(missing_ok=True)


def _fetch_with_retries(
    url: str,
    part: Path,
    settings: DownloadSettings,
    session: requests.Session,
    progress: bool | ProgressCallback | None,
) -> None:
    failures: list[_Transient] = []
    unreachable = 0
    for attempt in range(settings.retries + 1):
        try:
            _fetch(url, part, settings, session, progress)
            return
        except _Transient as exc:
            failures.append(exc)
            unreachable = unreachable + 1 if isinstance(exc, _Unreachable) else 0
            if unreachable >= CONNECT_ATTEMPTS:
                break
            if attempt < settings.retries:
                time.sleep(settings.backoff_seconds * 2**attempt)
    raise DownloadError(_retries_message(url, failures, part_size(part)), url=url)


def _retries_message(url: str, failures: list[_Transient], have: int) -> str:
    """One message for all attempts: each distinct reason once, then what to check."""
    reasons: dict[str, int] = {}
    for failure in failures:
        reasons[str(failure)] = reasons.get(str(failure), 0) + 1
    if len(reasons) == 1:
        said = next(iter(reasons))
    else:
        said = "; ".join(f"{reason} ({_times(n)})" for reason, n in reasons.items())
    hint = failures[-1].hint or "check the URL and your connection"
    resume = "; run again to resume from the bytes already received" if have else ""
    return (
        f"could not download {redact_url(url)} after {_attempts(len(failures))}: {said}. "
        f"{hint[0].upper()}{hint[1:]}{resume}"
    )


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _connection_failure(url: str, error: requests.exceptions.ConnectionError) -> _Transient:
    """A short reason for a failed connection, instead of urllib3's nested repr."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    reason = getattr(error.args[0] if error.args else None, "reason", None)
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return _Unreachable(
            f"no answer from {where} (connect timeout)",
            hint="check the host and port in the URL, and that no firewall or proxy blocks it",
        )
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return _Unreachable(
            f"the host name {parts.hostname!r} could not be resolved",
            hint="check the host name in the URL, your network and DNS",
        )
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        cause = reason.__cause__ or reason.__context__
        if isinstance(cause, ConnectionRefusedError):
            return _Unreachable(
                f"connection refused by {where}",
                hint="check that the server is running and that the host and port in the URL "
                "are right",
            )
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        return _Unreachable(
            f"could not connect to {where}: {redact_text(detail)}",
            hint="check the URL and your connection",
        )
    return _Transient(f"could not connect: {redact_text(str(error))}")


# Failures no retry can fix: a malformed URL, a scheme requests cannot fetch, a TLS
# certificate or protocol problem, a redirect loop.
_PERMANENT: tuple[type[Exception], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.SSLError,
    requests.exceptions.TooManyRedirects,
)
# What reading a body can raise when the connection breaks (or the watchdog ends it).
_BROKEN = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


def _fetch(
    url: str,
    part: Path,
    settings: DownloadSettings,
    session: requests.Session,
    progress: bool | ProgressCallback | None,
) -> None:
    watchdog = Watchdog(
        settings.min_bytes_per_second,
        settings.slow_seconds,
        settings.max_seconds,
        header_seconds=settings.connect_timeout + settings.read_timeout,
    )
    with watchdog:
        try:
            _fetch_watched(url, part, settings, session, progress, watchdog)
        except _Transient as exc:
            if watchdog.fired is None:
                raise
            raise _Unreachable(f"{watchdog.fired}; {exc}") from None


def _fetch_watched(
    url: str,
    part: Path,
    settings: DownloadSettings,
    session: requests.Session,
    progress: bool | ProgressCallback | None,
    watchdog: Watchdog,
) -> None:
    have = part_size(part)
    stored = read_resume(part) if have else None
    # Compressed transfers are asked not to happen; a range is asked only with If-Range, so
    # a file that changed since the .part bytes were received comes back whole (200).
    headers = {"Accept-Encoding": "identity"}
    if have and stored is not None and have < stored.total:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = stored.validator
    else:
        have = 0  # nothing to resume from (or no way to tell the file did not change)
    try:
        response = session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(settings.connect_timeout, settings.read_timeout),
            allow_redirects=True,
        )
    except _PERMANENT as exc:
        raise DownloadError(
            f"could not download {redact_url(url)}: {redact_text(str(exc))}", url=url
        ) from None
    except requests.exceptions.ConnectionError as exc:
        raise _connection_failure(url, exc) from None
    except requests.exceptions.RequestException as exc:
        raise _Transient(f"could not connect: {redact_text(str(exc))}") from None
    with response:
        if watchdog.fired is not None:  # the headers were cut off by the watchdog
            raise _Transient("the response headers never completed")
        watchdog.watch_response(response)
        plan = _check_response(response, url, part, have, stored)
        if not plan.append:
            have = 0
        _require_space(part, plan, have, url)
        report = _progress_reporter(
            progress, plan.wire_length if plan.compressed else plan.total, have, part.name
        )
        limit = plan.wire_length * MAX_INFLATION + READ_BYTES if plan.compressed else plan.total
        fresh = have == 0
        failure: SerapeumError | _Transient | None = None
        discard = False
        try:
            with open_part(part, append=plan.append) as sink:
                if not plan.append:  # the .part is now empty: remember what it will hold
                    write_resume(part, plan.resume)
                while True:
                    try:
                        chunk = response.raw.read1(READ_BYTES, decode_content=True)
                    except _BROKEN as exc:
                        failure = _Transient(
                            f"the connection broke after {have} of {plan.total} bytes: "
                            f"{redact_text(str(exc))}"
                        )
                        discard = plan.compressed  # a compressed transfer is never resumed
                        break
                    if not chunk:
                        break
                    watchdog.received(len(chunk))
                    if have + len(chunk) > limit:
                        failure, discard = _Transient(_overflow(plan, have + len(chunk))), True
                        break
                    if fresh and have == 0 and not GGUF_MAGIC.startswith(chunk[:4]):
                        failure, discard = _not_gguf(url, chunk[:4]), True
                        break
                    sink.write(chunk)
                    have += len(chunk)
                    report(response.raw.tell() if plan.compressed else have)
        finally:
            report(None)
        if failure is not None:
            if discard:
                _discard(part)
            raise failure
        wire = response.raw.tell()
    if plan.compressed:
        if wire != plan.wire_length:
            _discard(part)
            raise _Transient(f"the server sent {wire} of {plan.wire_length} compressed bytes")
    elif have != plan.total:
        raise _Transient(f"the server sent {have} of {plan.total} bytes")


def _overflow(plan: _Plan, received: int) -> str:
    if plan.compressed:
        return (
            f"the compressed body inflated to more than {MAX_INFLATION} times its "
            f"{plan.wire_length:,} bytes (a compression bomb?); the partial file was discarded"
        )
    return (
        f"the server sent more than the {plan.total:,} bytes it announced ({received:,} "
        "so far); the partial file was discarded"
    )


def _not_gguf(url: str, head: bytes) -> NotAModelError:
    """A body that does not start like a GGUF file: refused at its first bytes, not after
    gigabytes of a wrong link."""
    return NotAModelError(
        f"{redact_url(url)} did not send a GGUF model (it starts with {head!r}); use the "
        "direct link to a .gguf file",
        url=url,
    )


def _require_space(part: Path, plan: _Plan, have: int, url: str) -> None:
    """Refuse a file larger than the free disk space before writing a byte of it."""
    if plan.compressed:
        return  # the decoded size is unknown until the end
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    needed = plan.total - have
    if needed > free:
        raise CacheDirectoryError(
            f"{redact_url(url)} is {plan.total:,} bytes but only {free:,} bytes are free "
            f"in {part.parent}; free some space or set SERAPEUM_CACHE_DIR to a larger disk",
            url=url,
        )


def _check_response(
    response: requests.Response, url: str, part: Path, have: int, stored: Resume | None
) -> _Plan:
    """Classify the answer: how big the file is, and whether to append to the ``.part``."""
    status = response.status_code
    shown = redact_url(url)
    if status == 416:  # our partial file does not fit what the server has now: start over
        _discard(part)
        raise _Transient("the server refused to resume (HTTP 416); starting over")
    if status in (401, 403):
        raise HTTPStatusError(
            f"{shown} answered HTTP {status}: the file needs authorisation or is not shared "
            "publicly; use a URL that is downloadable without logging in",
            url=url,
            status=status,
        )
    if status == 404:
        raise HTTPStatusError(
            f"{shown} answered HTTP 404: no file there; check the URL", url=url, status=status
        )
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status} from the server")
    if status not in (200, 206):
        raise HTTPStatusError(f"{shown} answered HTTP {status}", url=url, status=status)
    headers = response.headers
    if "text/html" in headers.get("Content-Type", "").lower():
        raise NotAModelError(
            f"{shown} sent an HTML page, not a model file (a login or error page?); use the "
            "direct download link of the .gguf file",
            url=url,
        )
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    compressed = encoding not in ("", "identity")
    validator = _validator(headers)
    length = headers.get("Content-Length", "")
    if status == 206:
        start, total = _content_range(headers.get("Content-Range", ""))
        if compressed or stored is None:
            _discard(part)
            raise _Transient("the server resumed a transfer it cannot resume; starting over")
        if start != have:
            _discard(part)
            raise _Transient(f"the server resumed at byte {start}, not {have}; starting over")
        if total != stored.total or (validator is not None and validator != stored.validator):
            # A server that ignored If-Range: these bytes are from another version of the file.
            _discard(part)
            raise _Transient(
                "the file changed on the server since the download began; starting over"
            )
        wire = int(length) if length.isdigit() else total - start
        return _Plan(total, append=True, resume=stored, compressed=False, wire_length=wire)
    # 200: the whole file (also the answer to If-Range when the file changed)
    if not length.isdigit():
        raise NotAModelError(
            f"{shown} gave no Content-Length, so a complete download cannot be told from a "
            "cut-off one; use a server or mirror that sends the file size",
            url=url,
        )
    wire = int(length)
    if compressed:
        # The size of the decoded file is unknown until the end; the wire bytes are checked.
        return _Plan(0, append=False, resume=None, compressed=True, wire_length=wire)
    if wire < MIN_MODEL_BYTES:
        raise NotAModelError(f"{shown} is only {wire} bytes: too small to be a model", url=url)
    resume = Resume(validator, wire) if validator is not None else None
    return _Plan(wire, append=False, resume=resume, compressed=False, wire_length=wire)


def _validator(headers: requests.structures.CaseInsensitiveDict[str]) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may carry. None when neither is sent."""
    etag = headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "").strip() or None


def _content_range(header: str) -> tuple[int, int]:
    # "bytes 100-999/1000"
    try:
        unit, _, rest = header.partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.partition("-")[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, int(total)
    except ValueError:
        raise _Transient(f"unreadable Content-Range {header!r}") from None


def _verify(part: Path, url: str, sha256: str | None, verify: Verifier | None) -> None:
    """Cheapest first: the magic bytes, the GGUF structure, the SHA-256, the engine's load."""
    shown = redact_url(url)
    with part.open("rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise NotAModelError(
            f"{shown} did not send a GGUF model (it starts with {head!r}); use the direct link "
            "to a .gguf file",
            url=url,
        )
    try:
        check_gguf(part)
    except MalformedGGUFError as error:
        raise MalformedModelError(
            f"{shown} sent a broken GGUF file ({error.problem}); it was deleted and nothing "
            "was installed. If the transfer was cut short, run again; if it happens again, "
            "the file on the server is damaged",
            url=url,
            path=str(part),
            problem=error.problem,
        ) from error
    except NotGGUFError as error:
        raise NotAModelError(
            f"{shown} did not send a GGUF model ({error}); use the direct link to a .gguf file",
            url=url,
        ) from error
    if sha256 is not None:
        actual = file_sha256(part)
        expected = sha256.strip().lower()
        if actual != expected:
            raise ChecksumMismatchError(
                f"the file from {shown} has SHA-256 {actual}, not the expected {expected}; the "
                "download was deleted and nothing was installed. Check the checksum, or whether "
                "the URL now serves a different file",
                url=url,
                path=str(part),
                expected=expected,
                actual=actual,
                kept=False,
            )
    if verify is not None:
        verify(part)


def _check_cached_sha256(target: Path, expected: str, url: str) -> None:
    """A cached file that does not match is kept: a typo must never cost a re-download."""
    actual = file_sha256(target)
    expected = expected.strip().lower()
    if actual != expected:
        raise ChecksumMismatchError(
            f"the cached file {target} (downloaded from {redact_url(url)}) has SHA-256 "
            f"{actual}, not the expected {expected}. The file was kept: check the expected "
            f"checksum for a typo. If the file really is wrong, delete it ({target}) and "
            "run again to download it anew",
            url=url,
            path=str(target),
            expected=expected,
            actual=actual,
            kept=True,
        )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, as 64 lowercase hexadecimal digits (hashed once per file
    identity, shared with the engine's own check of ``model_sha256``)."""
    return sha256_of(path)


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
    terminal = _stderr_is_terminal()
    show = terminal if progress is None else progress
    if not show:
        return lambda done: None
    if not terminal:  # a file or a pipe: no bar frames, one line once the file is complete
        return _final_line(total, start, name.removesuffix(".part"))
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name.removesuffix(".part"),
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


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _final_line(total: int, start: int, name: str) -> Callable[[int | None], None]:
    """Progress for a log file: one line when the download completes, nothing before."""
    began = time.monotonic()
    last = start

    def report(done: int | None) -> None:
        nonlocal last
        if done is not None:
            last = done
            return
        if last < total:
            return  # the transfer failed; the error says so
        seconds = time.monotonic() - began
        resumed = f", resumed at {_size(start)}" if start else ""
        print(
            f"downloaded {name}: {_size(total)} in {seconds:.1f} s{resumed}",
            file=sys.stderr,
            flush=True,
        )

    return report


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
