"""Logging: one readable line per event, or JSON lines; known secrets and the userinfo of
every URL (``https://***@host/...``) are masked in both."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from bot.urls import MASK, mask_userinfo

# Secrets learnt at run time (e.g. the access token a password login returns).
_RUNTIME_SECRETS: set[str] = set()


def add_secret(secret: str) -> None:
    """Mask this string in every log line from now on."""
    if secret:
        _RUNTIME_SECRETS.add(secret)


class SecretFilter(logging.Filter):
    """Belt and braces: even if a secret reaches a log call, it never reaches the output."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._configured = set(secrets)

    def _secrets(self) -> list[str]:
        # Short strings would mask innocent words; real tokens and passwords are longer.
        every = {s for s in self._configured | _RUNTIME_SECRETS if s and len(s) >= 4}
        return sorted(every, key=len, reverse=True)

    def _mask(self, text: str, secrets: list[str]) -> str:
        for secret in secrets:
            text = text.replace(secret, MASK)
        # Feed URLs may carry credentials (https://user:secret@host/...), in any message
        # from any library: masked here, once, rather than at every call that logs a URL.
        return mask_userinfo(text)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets()
        message = record.getMessage()
        masked = self._mask(message, secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = self._mask(record.stack_info, secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            data["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(data, ensure_ascii=False)


def make_handler(stream: TextIO, *, fmt: str = "text",
                 secrets: Iterable[str] = ()) -> logging.Handler:
    """The handler every log line goes through: its filter masks secrets and userinfo."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(SecretFilter(secrets))
    return handler


def setup_logging(*, fmt: str = "text", level: str = "INFO",
                  secrets: Iterable[str] = ()) -> None:
    handler = make_handler(sys.stderr, fmt=fmt, secrets=secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # nio logs every retry and sync at INFO, and whole responses (tokens included) at
    # DEBUG: it stays at WARNING whatever our level; our own lines say what matters.
    for noisy in ("nio", "peewee", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
