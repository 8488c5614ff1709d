"""Keep credentials and tokens out of messages and logs: URLs are shown redacted.

Download URLs often carry secrets: ``https://user:password@host/...`` or signed links
with ``?token=...`` / ``?X-Amz-Signature=...``. Every message built from a URL goes
through ``redact_url`` (or ``redact_text`` for text that may contain URLs, such as an
HTTP client's exception message), so the secret never reaches a log or a bug report.
The host and path stay, so the message still says which file failed.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "RedactingFilter", "redact_logger", "redact_text", "redact_url"]

MASK = "***"

# A URL with a scheme, up to whitespace, a quote or an angle bracket.
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>`]+""")
# Punctuation that ends a sentence rather than the URL.
_TRAILING = ".,;:!?)]}"
# A path with a query string but no scheme/host, as HTTP clients print them
# ("Max retries exceeded with url: /m.gguf?token=abc"): the query is redacted too.
_BARE_QUERY = re.compile(r"""(?P<path>(?<![\w/:*])/[^\s'"<>`?#]*)\?(?P<query>[^\s'"<>`#()]*)""")


def redact_url(url: str) -> str:
    """``url`` without its user:password and with every query value and fragment masked.

    ``https://user:secret@host/m.gguf?token=abc#x`` becomes
    ``https://***@host/m.gguf?token=***#***``. Never raises: text that does not parse
    as a URL is cut at its first ``?``/``#`` (and its user part masked) instead.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return _redact_unparsable(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through ``redact_url`` (and bare query strings)."""

    def one_url(match: re.Match[str]) -> str:
        found = match.group(0)
        kept = found.rstrip(_TRAILING)
        return redact_url(kept) + found[len(kept) :]

    text = _URL.sub(one_url, text)
    return _BARE_QUERY.sub(lambda m: f"{m.group('path')}?{_redact_query(m.group('query'))}", text)


def _redact_query(query: str) -> str:
    """``a=1&b=2`` → ``a=***&b=***``; a value-less item (``?secret``) is masked whole."""
    if not query:
        return ""
    items = []
    for item in re.split(r"[&;]", query):
        if not item:
            continue
        name, equals, _value = item.partition("=")
        items.append(f"{name}={MASK}" if equals else MASK)
    return "&".join(items)


def _redact_unparsable(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = f"{MASK}@{host.rpartition('@')[2]}"
    rest = host + slash + path
    cut = min((rest.index(mark) for mark in "?#" if mark in rest), default=None)
    if cut is not None:
        rest = rest[: cut + 1] + MASK
    return f"{scheme}{sep}{rest}"


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record with the URLs in its message redacted.

    HTTP clients log request lines at DEBUG (urllib3: ``"GET /m.gguf?token=... HTTP/1.1"``);
    on their logger, this keeps such lines useful and free of secrets.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_installed: set[str] = set()
_install_lock = threading.Lock()


def redact_logger(name: str) -> None:
    """Add a ``RedactingFilter`` to the logger ``name`` (once per process)."""
    with _install_lock:
        if name not in _installed:
            logging.getLogger(name).addFilter(RedactingFilter())
            _installed.add(name)
