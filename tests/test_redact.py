"""URLs in messages and logs lose their credentials and query values, and keep the rest."""

from __future__ import annotations

import logging

import pytest

from serapeum.core.redact import RedactingFilter, redact_logger, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:secret@host/path/file.gguf?token=abc",
            "https://***@host/path/file.gguf?token=***",
        ),
        ("https://token@host:8443/m.gguf", "https://***@host:8443/m.gguf"),
        ("http://h/p?a=1&b&c=#frag", "http://h/p?a=***&***&c=***#***"),
        (
            "https://bucket.s3.amazonaws.com/m.gguf?X-Amz-Signature=deadbeef&X-Amz-Expires=60",
            "https://bucket.s3.amazonaws.com/m.gguf?X-Amz-Signature=***&X-Amz-Expires=***",
        ),
        ("https://huggingface.co/org/repo/resolve/main/m.gguf", None),  # nothing secret: as is
        ("http://127.0.0.1:9/m.gguf", None),
        ("", None),
    ],
)
def test_redact_url(url: str, expected: str | None) -> None:
    assert redact_url(url) == (url if expected is None else expected)


@pytest.mark.parametrize("url", ["http://[::1/x?t=secret", "http://u:secret@[::1/x#secret"])
def test_unparsable_urls_are_still_redacted(url: str) -> None:
    redacted = redact_url(url)
    assert "secret" not in redacted and "***" in redacted


def test_redaction_is_idempotent() -> None:
    once = redact_url("https://u:p@h/m?t=1#f")
    assert redact_url(once) == once
    assert redact_text(redact_text(f"see {once}.")) == f"see {once}."


def test_redact_text_finds_every_url_and_keeps_the_punctuation() -> None:
    text = (
        "could not download https://user:secret@h/m.gguf?token=abc. "
        "(mirror: http://m/x.gguf?sig=zzz), retry at ftp://a:b@c/d"
    )
    assert redact_text(text) == (
        "could not download https://***@h/m.gguf?token=***. "
        "(mirror: http://m/x.gguf?sig=***), retry at ftp://***@c/d"
    )


def test_redact_text_redacts_bare_query_strings_as_http_clients_print_them() -> None:
    message = (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/m.gguf?token=abc (Caused by NewConnectionError('Connection refused'))"
    )
    redacted = redact_text(message)
    assert "abc" not in redacted
    assert "url: /m.gguf?token=*** (Caused by NewConnectionError('Connection refused'))" in redacted
    assert (
        redact_text('"GET /a/b.gguf?x=1&y=2 HTTP/1.1" 404')
        == '"GET /a/b.gguf?x=***&y=*** HTTP/1.1" 404'
    )


def test_text_without_urls_is_unchanged() -> None:
    text = "nothing to hide here: 3/4 done? yes, a=b & c"
    assert redact_text(text) == text


def test_the_logging_filter_redacts_messages_and_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("serapeum.tests.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug('%s://%s:%s "%s %s"', "http", "h", 80, "GET", "/m.gguf?token=abc")
        logger.info("fetching https://u:pw@h/m.gguf")
        logger.info("plain %d", 3)
    assert caplog.messages == [
        'http://h:80 "GET /m.gguf?token=***"',
        "fetching https://***@h/m.gguf",
        "plain 3",
    ]


def test_redact_logger_installs_one_filter(caplog: pytest.LogCaptureFixture) -> None:
    name = "serapeum.tests.redact.once"
    redact_logger(name)
    redact_logger(name)
    filters = logging.getLogger(name).filters
    assert sum(isinstance(f, RedactingFilter) for f in filters) == 1
