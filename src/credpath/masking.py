"""Secrets masker: registered values are redacted from log messages.

Airflow keeps one regular expression of every secret and recompiles it on each registration, so
registering n secrets costs O(n^2) (61.7 s for 1,000 connections). Here registration appends to a
pending list (O(1)); patterns are built lazily at the next redaction in power-of-two batches, like a
binary counter, so each secret is compiled into O(log n) patterns over its lifetime and a redaction
runs at most O(log n) patterns.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

REPLACEMENT = "***"
#: Airflow 3's ``[logging] min_length_masked_secret``: shorter values would mask ordinary words.
MIN_LENGTH = 5


class Masker:
    def __init__(self, min_length: int = MIN_LENGTH, replacement: str = REPLACEMENT) -> None:
        self.min_length = min_length
        self.replacement = replacement
        self._known: set[str] = set()
        self._pending: list[str] = []
        # Each batch: (secrets, compiled pattern); sizes are distinct powers of two.
        self._batches: list[tuple[list[str], re.Pattern[str]]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def add(self, secret: str | None) -> None:
        if not secret or not isinstance(secret, str) or len(secret) < self.min_length:
            return
        if secret in self._known:
            return
        with self._lock:
            for variant in {secret, quote(secret, safe="")}:
                if variant not in self._known:
                    self._known.add(variant)
                    self._pending.append(variant)

    def add_all(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self.add(secret)

    def _flush(self) -> None:
        with self._lock:
            # Pending stays non-empty until the new batches are in place, so a concurrent redact()
            # waits on the lock here instead of redacting with patterns that lack the new secrets.
            pending = list(self._pending)
            batches = list(self._batches)
            for secret in pending:
                carry = [secret]
                # Merge equal-sized batches (binary-counter carry).
                while batches and len(batches[-1][0]) == len(carry):
                    carry = batches.pop()[0] + carry
                batches.append((carry, _compile(carry)))
            self._batches = batches
            del self._pending[: len(pending)]

    def redact(self, text: str) -> str:
        if self._pending:
            self._flush()
        batches = self._batches
        if not batches or not text:
            return text
        spans: list[tuple[int, int]] = []
        for _, pattern in batches:
            # Zero-width lookahead matches find secrets that overlap one another, so the union is masked.
            spans.extend((m.start(), m.start() + len(m.group(1))) for m in pattern.finditer(text))
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        pos = 0
        cur_start, cur_end = spans[0]
        for start, end in spans[1:]:
            if start <= cur_end:  # overlapping secrets: mask the union
                cur_end = max(cur_end, end)
                continue
            out.extend((text[pos:cur_start], self.replacement))
            pos = cur_end
            cur_start, cur_end = start, end
        out.extend((text[pos:cur_start], self.replacement, text[cur_end:]))
        return "".join(out)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self._pending.clear()
            self._batches.clear()


def _compile(secrets: list[str]) -> re.Pattern[str]:
    # Longest first, so a secret that contains another is masked whole.
    alternatives = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    return re.compile(f"(?=({alternatives}))")


_default_masker = Masker()
_factory_installed = False


def default_masker() -> Masker:
    return _default_masker


def mask_secret(secret: str | None) -> None:
    """Register a value to be masked in log output (installs the log hook on first use)."""
    install_log_masking()
    _default_masker.add(secret)


def redact(text: str) -> str:
    return _default_masker.redact(text)


class MaskingFilter(logging.Filter):
    """A logging.Filter that redacts registered secrets from a record's message and traceback."""

    def __init__(self, masker: Masker | None = None) -> None:
        super().__init__()
        self.masker = masker or _default_masker

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.masker.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.masker.redact(record.exc_text)
        return True


def install_log_masking() -> None:
    """Redact secrets in every log record, whatever logger or handler (added now or later) emits it.

    A record factory reaches all handlers, unlike a filter on one handler; the redaction itself runs in
    ``getMessage`` so records that are never formatted cost nothing.
    """
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()
    masker = _default_masker

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.__class__ = _redacting_class(type(record))
        record._credpath_masker = masker  # type: ignore[attr-defined]
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


_redacting_classes: dict[type, type] = {}


def _redacting_class(base: type) -> type:
    cls = _redacting_classes.get(base)
    if cls is None:

        def getMessage(self: logging.LogRecord) -> str:
            return self._credpath_masker.redact(base.getMessage(self))  # type: ignore[attr-defined]

        cls = type(f"Masked{base.__name__}", (base,), {"getMessage": getMessage})
        _redacting_classes[base] = cls
    return cls
