"""Keeping secrets out of logs, manifests and error messages.

Clients register the keys they use; every text vchain persists or prints about a failure goes through
`redact`, so a server that echoes the key in an error body cannot leak it into `manifest.json`.
"""

from __future__ import annotations

import os
import threading

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_ENVIRONMENT = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def register_secret(value: str | None) -> None:
    """Remember `value` as a secret (keys shorter than 8 characters are placeholders, not secrets)."""
    if value and len(value) >= 8:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret and every key from the environment replaced by `***`."""
    with _LOCK:
        secrets = set(_SECRETS)
    secrets.update(v for name in _ENVIRONMENT if len(v := os.environ.get(name, "")) >= 8)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
