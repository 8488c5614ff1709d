"""Only the verified, complete file is ever installed, and a good cached file is never lost.

Everything runs against the real loopback HTTP server (``serapeum.llama_cpp.testing.
http_server``), whose faults are real: short bodies, dropped connections, files replaced
between attempts, gzip-compressed bodies, servers that ignore ``If-Range``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

import serapeum_source_url
from serapeum.core import errors as core_errors
from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest
from serapeum_source_url import (
    URL_SOURCE,
    CacheDirectoryError,
    ChecksumMismatchError,
    DownloadError,
    DownloadSettings,
    HTTPStatusError,
    MalformedModelError,
    NotAModelError,
    cached_path,
    download_model,
)

FAST = DownloadSettings(retries=3, backoff_seconds=0.01, read_timeout=5)
ONCE = DownloadSettings(retries=0, backoff_seconds=0.01, read_timeout=5)
DROP = 200_000


def _leftovers(target: Path) -> list[str]:
    """Anything at the final path, plus the partial file and its metadata (not the lock)."""
    return sorted(
        p.name for p in target.parent.glob(target.name + "*") if not p.name.endswith(".lock")
    )


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


@pytest.fixture
def other_model(tiny_llama3_model_path: Path) -> bytes:
    """A second valid model: what the server has after "the file changed"."""
    return tiny_llama3_model_path.read_bytes()


# -- 1. a short body with a matching Content-Length is never installed ---------------------


@pytest.mark.parametrize("keep", ["half", "header only"])
def test_a_truncated_file_with_a_matching_length_is_refused_and_not_cached(
    http_server: Any, model_bytes: bytes, cache_root: Path, keep: str
) -> None:
    short = model_bytes[: len(model_bytes) // 2] if keep == "half" else model_bytes[:200]
    url = http_server.serve("/short.gguf", short)  # Content-Length == len(short): "complete"
    target = cached_path(url)
    with pytest.raises(MalformedModelError) as caught:
        download_model(url, target, settings=FAST)
    error = caught.value
    assert isinstance(error, NotAModelError) and isinstance(error, DownloadError)
    assert isinstance(error, core_errors.MalformedGGUFError)  # the engine's own error type
    assert isinstance(error, ValueError) and isinstance(error, OSError)
    assert error.problem and "nothing was installed" in str(error)
    assert _leftovers(target) == []  # no final file, no .part, no .part.meta
    # The cache heals: the next run asks the server again, and gets the whole file.
    http_server.files["/short.gguf"] = model_bytes
    assert download_model(url, target, settings=FAST).read_bytes() == model_bytes
    assert len(http_server.requests_for("/short.gguf")) == 2


def test_the_engine_check_runs_on_the_part_before_install(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    target = cached_path(url)
    seen: list[tuple[Path, bool, bool]] = []

    def verify(path: Path) -> None:
        seen.append((path, target.exists(), path.read_bytes() == model_bytes))

    request = ModelRequest(model_url=url, verify=verify)
    assert URL_SOURCE.resolve(request) == target
    assert seen == [(_part(target), False, True)]  # complete, and not yet installed
    URL_SOURCE.resolve(request)
    assert len(seen) == 1  # a cache hit was verified before it was installed


class Refused(ConfigurationError):
    """What an engine check raises for a file it will not load (a SerapeumError)."""


def test_a_file_the_engine_refuses_is_deleted_and_its_error_kept(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    target = cached_path(url)

    def refuse(path: Path) -> None:
        raise Refused(f"{path} would not load")

    with pytest.raises(Refused) as caught:
        URL_SOURCE.resolve(ModelRequest(model_url=url, verify=refuse))
    assert any("refused and deleted" in note for note in caught.value.__notes__)
    assert _leftovers(target) == []


# -- 2. a file that changed between attempts is never spliced ------------------------------


def test_a_file_changed_between_calls_starts_over(
    http_server: Any, model_bytes: bytes, other_model: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, drop_after=DROP)
    target = cached_path(url)
    with pytest.raises(DownloadError):
        download_model(url, target, settings=ONCE)
    meta = json.loads(target.with_name(target.name + ".part.meta").read_text())
    first_etag = meta["validator"]
    http_server.files["/m.gguf"] = other_model  # a new upload under the same URL
    assert download_model(url, target, settings=ONCE).read_bytes() == other_model
    resumed = http_server.requests_for("/m.gguf")[-1]
    assert resumed.range is not None and resumed.if_range == first_etag
    assert resumed.status == 200 and resumed.body_bytes == len(other_model)
    assert _leftovers(target) == [target.name]


def test_a_file_changed_during_the_retries_starts_over(
    http_server: Any, model_bytes: bytes, other_model: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, drop_after=DROP, change_to=other_model)
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == other_model
    assert [r.status for r in http_server.requests_for("/m.gguf")] == [200, 200]


def test_a_server_that_ignores_if_range_is_caught_by_its_etag(
    http_server: Any, model_bytes: bytes, other_model: bytes, cache_root: Path
) -> None:
    url = http_server.serve(
        "/m.gguf", model_bytes, drop_after=DROP, change_to=other_model, honour_if_range=False
    )
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == other_model
    _first, spliced, fresh = http_server.requests_for("/m.gguf")
    assert spliced.status == 206  # the broken server resumed the new file...
    assert fresh.range is None and fresh.status == 200  # ...which was thrown away


def test_last_modified_is_used_when_there_is_no_strong_etag(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    url = http_server.serve(
        "/m.gguf", model_bytes, drop_after=DROP, etag='W/"weak"', last_modified=date
    )
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == model_bytes
    second = http_server.requests_for("/m.gguf")[1]
    assert second.if_range == date and second.status == 206


@pytest.mark.parametrize("etag", [None, 'W/"weak-only"'])
def test_without_a_validator_a_partial_file_is_started_over_not_resumed(
    http_server: Any, model_bytes: bytes, other_model: bytes, cache_root: Path, etag: str | None
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, drop_after=DROP, etag=etag)
    target = cached_path(url)
    with pytest.raises(DownloadError):
        download_model(url, target, settings=ONCE)
    assert _part(target).stat().st_size > 0  # kept, but nothing says what version it holds
    http_server.files["/m.gguf"] = other_model
    assert download_model(url, target, settings=ONCE).read_bytes() == other_model
    resumed = http_server.requests_for("/m.gguf")[-1]
    assert resumed.range is None and resumed.if_range is None


# -- 3. compressed transfers ---------------------------------------------------------------


def test_identity_encoding_is_requested(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, drop_after=DROP)
    download_model(url, cached_path(url), settings=FAST)
    assert {r.accept_encoding for r in http_server.requests_for("/m.gguf")} == {"identity"}


def test_a_server_that_gzips_anyway_delivers_the_decoded_model(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, gzip=True)
    seen: list[tuple[int, int]] = []
    path = download_model(
        url, cached_path(url), settings=FAST, progress=lambda d, t: seen.append((d, t))
    )
    assert path.read_bytes() == model_bytes
    [request] = http_server.requests_for("/m.gguf")
    assert request.content_encoding == "gzip"
    assert request.body_bytes < len(model_bytes)  # really compressed on the wire
    assert seen[-1] == (request.body_bytes, request.body_bytes)  # wire bytes of wire length


def test_a_dropped_gzip_transfer_is_started_over_never_resumed(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/m.gguf", model_bytes, gzip=True, drop_after=5_000)
    assert download_model(url, cached_path(url), settings=FAST).read_bytes() == model_bytes
    first, second = http_server.requests_for("/m.gguf")
    assert first.body_bytes == 5_000 and second.range is None and second.status == 200


def test_a_gzip_body_cut_short_with_a_matching_length_is_refused(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    import gzip

    wire = gzip.compress(model_bytes, mtime=0)
    # The server compresses what it serves: half of a file, "complete" on the wire.
    url = http_server.serve("/m.gguf", model_bytes[: len(model_bytes) // 2], gzip=True)
    target = cached_path(url)
    with pytest.raises(MalformedModelError):
        download_model(url, target, settings=FAST)
    assert _leftovers(target) == [] and len(wire) > 0


# -- 4. a checksum never costs a good cached file ------------------------------------------


def _one_digit_off(digest: str) -> str:
    return digest[:-1] + ("0" if digest[-1] != "0" else "1")


def test_a_wrong_checksum_for_a_cached_file_keeps_it(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    target = download_model(url, cached_path(url), settings=FAST)
    good = hashlib.sha256(model_bytes).hexdigest()
    typo = _one_digit_off(good)
    requests_before = len(http_server.log)
    with pytest.raises(ChecksumMismatchError) as caught:
        download_model(url, target, sha256=typo, settings=FAST)
    error = caught.value
    assert isinstance(error, core_errors.ChecksumMismatchError) and isinstance(error, DownloadError)
    assert isinstance(error, ValueError)
    assert (error.expected, error.actual, error.path, error.kept) == (typo, good, str(target), True)
    message = str(error)
    assert typo in message and good in message and "was kept" in message
    assert f"delete it ({target})" in message
    assert target.read_bytes() == model_bytes  # nothing lost
    assert len(http_server.log) == requests_before  # and nothing downloaded
    assert download_model(url, target, sha256=good, settings=FAST) == target


def test_a_wrong_checksum_for_a_fresh_download_discards_only_that_download(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    url = http_server.serve("/tiny.gguf", model_bytes)
    target = cached_path(url)
    typo = _one_digit_off(hashlib.sha256(model_bytes).hexdigest())
    with pytest.raises(ChecksumMismatchError) as caught:
        URL_SOURCE.resolve(ModelRequest(model_url=url, options={"sha256": typo}))
    assert caught.value.kept is False and "nothing was installed" in str(caught.value)
    assert _leftovers(target) == []


def test_the_download_command_with_a_typo_keeps_the_cached_model(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    """The reported data loss, end to end: ``download --sha256 <one wrong digit> URL``."""
    url = http_server.serve("/tiny.gguf", model_bytes)
    env = {**os.environ, "SERAPEUM_CACHE_DIR": str(cache_root)}
    command = [sys.executable, "-m", "serapeum.llama_cpp", "download", "--quiet"]
    first = subprocess.run([*command, url], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cached = Path(first.stdout.strip())
    typo = _one_digit_off(hashlib.sha256(model_bytes).hexdigest())
    again = subprocess.run(
        [*command, "--sha256", typo, url], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and typo in again.stderr
    assert cached.read_bytes() == model_bytes


# -- 6. cache directory problems are typed and say the fix ---------------------------------


def _assert_cache_error(error: BaseException, directory: Path) -> None:
    assert isinstance(error, CacheDirectoryError)
    assert isinstance(error, core_errors.CacheDirectoryError) and isinstance(error, OSError)
    assert isinstance(error, SerapeumError) and isinstance(error, DownloadError)
    assert str(directory) in str(error) and "SERAPEUM_CACHE_DIR" in str(error)
    assert "move" in str(error) and "out of the way" in str(error)


def test_a_cache_directory_that_is_a_file(
    http_server: Any, model_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_way = tmp_path / "not-a-dir"
    in_the_way.write_text("a file where the cache should be")
    url = http_server.serve("/tiny.gguf", model_bytes)
    for cache in (in_the_way, in_the_way / "sub"):  # the cache itself, or a parent, is a file
        monkeypatch.setenv("SERAPEUM_CACHE_DIR", str(cache))
        with pytest.raises(CacheDirectoryError) as caught:
            URL_SOURCE.resolve(ModelRequest(model_url=url))
        _assert_cache_error(caught.value, cache)
        assert "is a file, not a directory" in str(caught.value)
    assert http_server.log == []


READ_ONLY_CACHE = """
import sys
from serapeum.core.plugins import ModelRequest
from serapeum_source_url import URL_SOURCE
try:
    URL_SOURCE.resolve(ModelRequest(model_url="http://127.0.0.1:9/m.gguf"))
except Exception as error:
    print(type(error).__module__, type(error).__name__, sep=".")
    print(error)
"""


def _without_root_powers(command: list[str]) -> list[str]:
    """Root ignores permission bits; without CAP_DAC_OVERRIDE it obeys them like anyone."""
    if os.geteuid() != 0:
        return command
    drop = "-dac_override,-dac_read_search"
    setpriv = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    try:
        probe = subprocess.run([*setpriv, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "running as root, which writes to read-only directories, and setpriv "
            "cannot drop that power here: nothing to refuse"
        )
    return [*setpriv, *command]


def test_a_read_only_cache_directory(tmp_path: Path) -> None:
    cache = tmp_path / "read-only"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        command = _without_root_powers([sys.executable, "-c", READ_ONLY_CACHE])
        env = {**os.environ, "SERAPEUM_CACHE_DIR": str(cache)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        cache.chmod(0o755)
    assert done.returncode == 0, done.stderr
    kind, message = done.stdout.strip().split("\n", 1)
    assert kind == "serapeum_source_url.errors.CacheDirectoryError"
    assert f"{cache}: permission denied" in message
    assert "SERAPEUM_CACHE_DIR" in message and f"fix the permissions of {cache}" in message


# -- 7. credentials and tokens never reach a message or a log ------------------------------

SECRETS = ("secret", "abc123")


def _secret_url(http_server: Any, path: str) -> str:
    return f"http://user:secret@127.0.0.1:{http_server.port}{path}?token=abc123"


def _assert_redacted(error: BaseException) -> None:
    shown = "".join(traceback.format_exception(error)) + repr(error)
    shown += str(getattr(error, "url", ""))
    for secret in SECRETS:
        assert secret not in shown
    assert "***" in shown


@pytest.mark.parametrize("fault", ["404", "html", "truncated", "dropped", "refused", "tls"])
def test_credentials_and_tokens_never_appear_in_errors_or_logs(
    http_server: Any,
    model_bytes: bytes,
    cache_root: Path,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _secret_url(http_server, "/m.gguf")
    if fault == "404":
        expected: type[Exception] = HTTPStatusError
    elif fault == "html":
        http_server.serve("/m.gguf", b"<html>log in</html>" * 10, content_type="text/html")
        expected = NotAModelError
    elif fault == "truncated":
        http_server.serve("/m.gguf", model_bytes[:5000])
        expected = MalformedModelError
    elif fault == "dropped":
        http_server.serve("/m.gguf", model_bytes, drop_after=1000, drop_times=99, ranges=False)
        expected = DownloadError
    elif fault == "refused":
        url = "http://user:secret@127.0.0.1:9/m.gguf?token=abc123"
        expected = DownloadError
    else:  # https to a plain-HTTP server: a TLS failure, whose message quotes the URL
        url = url.replace("http://", "https://")
        expected = DownloadError
    with pytest.raises(expected) as caught:
        download_model(
            url, cached_path(url), settings=DownloadSettings(retries=1, backoff_seconds=0)
        )
    _assert_redacted(caught.value)
    assert "127.0.0.1" in str(caught.value)  # still says where
    for secret in SECRETS:
        assert secret not in caplog.text
    if fault in ("404", "truncated"):
        assert "token=***" in caplog.text  # the HTTP client's own log line, redacted


def test_a_cached_checksum_mismatch_message_is_redacted(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    http_server.serve("/m.gguf", model_bytes)
    url = _secret_url(http_server, "/m.gguf")
    target = download_model(url, cached_path(url), settings=FAST)
    with pytest.raises(ChecksumMismatchError) as caught:
        download_model(url, target, sha256="0" * 64, settings=FAST)
    _assert_redacted(caught.value)
    assert http_server.requests_for("/m.gguf")[0].query == "token=abc123"  # the server got it


# -- unreachable servers and hopeless URLs end quickly -------------------------------------


def test_a_refused_connection_is_tried_twice_not_for_minutes(cache_root: Path) -> None:
    url = "http://127.0.0.1:9/nothing-listens.gguf"
    settings = DownloadSettings(retries=4, backoff_seconds=0.01)
    with pytest.raises(DownloadError, match="after 2 attempts") as caught:
        download_model(url, cached_path(url), settings=settings)
    assert str(caught.value).count("connection refused") == 1  # both attempts, said once


def test_a_tls_failure_is_not_retried(
    http_server: Any, model_bytes: bytes, cache_root: Path
) -> None:
    http_server.serve("/m.gguf", model_bytes)
    url = http_server.url("/m.gguf").replace("http://", "https://")
    with pytest.raises(DownloadError) as caught:
        download_model(url, cached_path(url), settings=FAST)
    assert "attempts" not in str(caught.value) and "SSL" in str(caught.value)


# -- 8. one error root ---------------------------------------------------------------------


def test_every_exported_error_is_a_serapeum_error_and_a_builtin() -> None:
    builtins = (ValueError, OSError, LookupError, TypeError, RuntimeError)
    exported = [
        getattr(serapeum_source_url, name)
        for name in serapeum_source_url.__all__
        if isinstance(getattr(serapeum_source_url, name), type)
        and issubclass(getattr(serapeum_source_url, name), BaseException)
    ]
    assert len(exported) >= 7
    for cls in exported:
        assert issubclass(cls, SerapeumError), cls
        assert issubclass(cls, builtins), cls
        assert cls.__module__ == "serapeum_source_url.errors", cls
    assert issubclass(ChecksumMismatchError, core_errors.ChecksumMismatchError)
    assert issubclass(CacheDirectoryError, core_errors.CacheDirectoryError)
    assert issubclass(MalformedModelError, core_errors.MalformedGGUFError)
    assert issubclass(NotAModelError, core_errors.NotGGUFError)
