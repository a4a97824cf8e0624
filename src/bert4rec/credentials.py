"""Credentials are never shown: URLs are printed, logged and recorded without their
`user:password@` part, and secret values are masked in the commands we log."""

from __future__ import annotations

import os
import urllib.parse

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without user:password@, user, password); user is None when there are none."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    unquote = urllib.parse.unquote
    return clean, unquote(parts.username or ""), unquote(parts.password) if parts.password is not None else None


def without_credentials(url: str | None) -> str | None:
    return None if url is None else split_credentials(url)[0]


def masked(text: str) -> str:
    """`text` with the values of secret environment variables replaced by ***."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
