"""Keeping secrets out of logs, manifests and error messages.

Clients register the keys they use; every text vchain persists or prints about a failure goes through
`redact`, so a server that echoes the key in an error body cannot leak it into `manifest.json`. Credentials
written into a URL (`https://user:password@host/...`, `?api-key=...`) are redacted wherever a URL appears,
registered or not. `protect_logs` makes every log record (third-party loggers such as httpx, httpcore and
openai included) pass through `redact` when it is created, and `scrub_exception` redacts an exception and
every exception chained to it, so that a printed traceback holds no key either.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_ENVIRONMENT = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@]*@")
_QUERY_VALUE = re.compile(r"([?&;][^=&;#]+=)[^&;#]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def register_secret(value: str | None) -> None:
    """Remember `value` as a secret (keys shorter than 8 characters are placeholders, not secrets)."""
    if value and len(value) >= 8:
        with _LOCK:
            _SECRETS.add(value)


def register_url_secrets(url: str | None) -> None:
    """Register the credentials a URL carries: its user info (and the Basic header made of it) and query values."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        register_secret(password)
        register_secret(f"{user}:{password}")
        register_secret(base64.b64encode(f"{user}:{password}".encode()).decode())
    for _, value in parse_qsl(parts.query, keep_blank_values=True):
        register_secret(value)


def _redact_url(match: re.Match) -> str:
    url = _USERINFO.sub(r"\1***@", match.group(0))
    return _QUERY_VALUE.sub(r"\1***", url)


def redact(text: str) -> str:
    """`text` with every registered secret, every key from the environment and the credentials of every
    URL replaced by `***`."""
    with _LOCK:
        secrets = set(_SECRETS)
    secrets.update(v for name in _ENVIRONMENT if len(v := os.environ.get(name, "")) >= 8)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URL.sub(_redact_url, text)


def server_identity(url: str) -> str:
    """What names a server in fingerprints and cache keys: scheme, host:port and path, no credentials or query.

    `https://user:pw@API.example.com/v1/?key=x` -> `https://api.example.com:443/v1`.
    """
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"


def scrub_exception(error: BaseException) -> BaseException:
    """Redact the message of `error` and of every exception chained to it, in place; returns `error`."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        for attribute in ("message", "body", "text"):
            value = getattr(current, attribute, None)
            if isinstance(value, (str, dict, list)):
                with contextlib.suppress(AttributeError):  # a read-only property keeps its value
                    setattr(current, attribute, _redact_value(value))
        pending += [current.__cause__, current.__context__]
    return error


def _redact_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    return value


_INSTALLED = False


def protect_logs() -> None:
    """Make every log record of this process redacted as it is created (idempotent).

    A record factory, not a handler filter, so that it holds for any handler and for loggers vchain does
    not own: with debug logging on, httpx, httpcore and openai log URLs and server headers that may echo
    a key. A record's traceback is redacted when its text is first formatted.
    """
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        _INSTALLED = True
    make = logging.getLogRecordFactory()

    def redacting(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's own error to report
            return record
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            scrub_exception(record.exc_info[1])
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(redacting)
