"""Secrets masker: registered values are redacted from log messages.

Matching: every registered secret (and its URL-quoted form) is found with Aho-Corasick automata
(pyahocorasick, C), so a redaction scans the text once per automaton whatever the number or length of
the secrets. A Python ``re`` alternation instead slows down with the number of secrets and takes seconds to
compile after a very long one; the automata cost about the same in every case (bench/faults_metastore.py;
figures in bench/RESULTS.md).

- Only the first ``_PREFIX`` characters of a secret enter an automaton; a prefix hit is confirmed with
  ``str.startswith`` (a bounded C compare). Build cost and memory stay bounded per secret, and
  pyahocorasick crashes freeing a trie 1 MiB deep.
- Automata are immutable once built: Airflow registers secrets one at a time, so they come in
  power-of-two batches merged like a binary counter (each secret is rebuilt O(log n) times; a redaction
  scans at most log2(n) + 1 automata).
- Registration builds the new batches under a lock and publishes them with one reference swap before
  ``add`` returns; redaction reads the published tuple without locking. A secret is marked known only
  after it is published, so a second thread registering the same secret never returns early while it
  can still pass through in clear.
- Without pyahocorasick (a declared dependency) the same prefixes go into one regex per batch: slower
  with many secrets, still correct and still independent of secret length.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

__all__ = [
    "MIN_LENGTH",
    "REPLACEMENT",
    "Masker",
    "MaskingFilter",
    "default_masker",
    "install_log_masking",
    "mask_secret",
    "redact",
]


REPLACEMENT = "***"
#: Airflow 3's ``[logging] min_length_masked_secret``: shorter values would mask ordinary words.
MIN_LENGTH = 5
#: Characters of each secret put in an automaton (the rest is compared on a prefix hit).
_PREFIX = 32


class _Batch:
    """An immutable group of secrets and the automaton that finds their prefixes."""

    __slots__ = ("automaton", "by_prefix", "pattern", "secrets")

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        by_prefix: dict[str, tuple[int, tuple[str, ...]]] = {}
        groups: dict[str, list[str]] = {}
        for secret in secrets:
            groups.setdefault(secret[:_PREFIX], []).append(secret)
        for prefix, group in groups.items():
            # Longest first: at one position the longest secret that matches covers the shorter ones.
            by_prefix[prefix] = (len(prefix), tuple(sorted(group, key=len, reverse=True)))
        self.by_prefix = by_prefix
        self.automaton: Any = None
        self.pattern: re.Pattern[str] | None = None
        try:
            import ahocorasick
        except ImportError:  # a dependency; without it masking still works, with regex batches
            alternatives = "|".join(re.escape(p) for p in sorted(by_prefix, key=len, reverse=True))
            self.pattern = re.compile(f"(?=({alternatives}))")
            return
        automaton = ahocorasick.Automaton()
        for prefix, value in by_prefix.items():
            automaton.add_word(prefix, value)
        automaton.make_automaton()
        self.automaton = automaton

    def hits(self, text: str) -> Iterator[tuple[int, int, tuple[str, ...]]]:
        """(start, prefix length, secrets with that prefix) for every prefix occurrence in ``text``."""
        if self.automaton is not None:
            for end, (length, group) in self.automaton.iter(text):
                yield end - length + 1, length, group
            return
        assert self.pattern is not None
        for match in self.pattern.finditer(text):
            # The regex reports the longest prefix at a position; shorter ones there may match too.
            found = match.group(1)
            for length in range(len(found), 0, -1):
                entry = self.by_prefix.get(found[:length])
                if entry is not None:
                    yield match.start(), length, entry[1]


class Masker:
    def __init__(self, min_length: int = MIN_LENGTH, replacement: str = REPLACEMENT) -> None:
        self.min_length = min_length
        self.replacement = replacement
        self._known: set[str] = set()  # published secrets only
        self._batches: tuple[_Batch, ...] = ()  # sizes are distinct powers of two, largest first
        self._lock = threading.Lock()  # serializes registration; redaction never takes it

    def __len__(self) -> int:
        return len(self._known)

    def add(self, secret: str | None) -> None:
        if not secret or not isinstance(secret, str) or len(secret) < self.min_length:
            return
        if secret in self._known:  # safe without the lock: known means already published
            return
        with self._lock:
            new = [v for v in dict.fromkeys((secret, quote(secret, safe=""))) if v not in self._known]
            if not new:
                return
            batches = list(self._batches)
            for variant in new:
                carry = [variant]
                # Merge equal-sized batches (binary-counter carry).
                while batches and len(batches[-1].secrets) == len(carry):
                    carry = batches.pop().secrets + carry
                batches.append(_Batch(carry))
            self._batches = tuple(batches)  # published: every redaction from now on masks it
            self._known.update(new)

    def add_all(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self.add(secret)

    def redact(self, text: str) -> str:
        batches = self._batches
        if not batches or not text or not isinstance(text, str):
            return text
        spans: list[tuple[int, int]] = []
        for batch in batches:
            for start, _length, group in batch.hits(text):
                for secret in group:
                    if text.startswith(secret, start):
                        spans.append((start, start + len(secret)))
                        break
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
            self._batches = ()
            self._known = set()


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
