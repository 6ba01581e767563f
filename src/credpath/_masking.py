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
- Content patterns (Airflow's ``[core] mask_secrets_content_patterns``, off by default): well-known
  credential formats (AWS keys, GitHub/Slack/Google/Stripe tokens, PEM private keys, JWTs) are masked
  whether registered or not. One compiled union, run only on text holding one of the formats' fixed
  prefixes, so its cost per line does not depend on the number of registered secrets.

Structured values (a variable's JSON, a connection's extra) go through :func:`redact_value`: every value
under a sensitive key is replaced, whatever its type (Airflow 3.3.2 leaves numbers and booleans under a
sensitive key in clear), and strings elsewhere are redacted as text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "CONTENT_PATTERNS_ENV",
    "KNOWN_SECRET_PATTERNS",
    "MIN_LENGTH",
    "REPLACEMENT",
    "SENSITIVE_FIELDS",
    "Masker",
    "MaskingFilter",
    "default_masker",
    "install_log_masking",
    "is_sensitive_key",
    "mask_secret",
    "redact",
    "redact_text_value",
    "redact_value",
]


REPLACEMENT = "***"
#: Airflow 3's ``[logging] min_length_masked_secret``: shorter values would mask ordinary words.
MIN_LENGTH = 5
#: Characters of each secret put in an automaton (the rest is compared on a prefix hit).
_PREFIX = 32

#: Airflow's setting that turns content-pattern masking on (``[core] mask_secrets_content_patterns``).
CONTENT_PATTERNS_ENV = "AIRFLOW__CORE__MASK_SECRETS_CONTENT_PATTERNS"

#: Airflow's built-in content patterns (``KNOWN_SECRET_PATTERNS`` of its secrets masker, main branch):
#: same names, same expressions, so a line is masked the same way by both.
KNOWN_SECRET_PATTERNS: dict[str, str] = {
    "aws_access_key": r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    "slack_token": r"\bxox[baprs]-[A-Za-z0-9-]{10,255}\b",
    "google_api_key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "stripe_live_key": r"\bsk_live_[0-9A-Za-z]{24,64}\b",
    "pem_private_key_block": (
        r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |PGP )?PRIVATE KEY-----"
        r"[\s\S]{1,16384}?-----END (?:RSA |EC |OPENSSH |DSA |PGP )?PRIVATE KEY-----"
    ),
    "jwt": r"\beyJ[A-Za-z0-9_\-]{10,4096}\.eyJ[A-Za-z0-9_\-]{10,4096}\.[A-Za-z0-9_\-]{10,4096}\b",
}
#: A literal every built-in pattern's match contains: text without any of them cannot match, so the
#: regex runs only on the rare line that has one (a C substring search per literal otherwise).
_KNOWN_LITERALS = (
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "xox",
    "AIza",
    "sk_live_",
    "PRIVATE KEY-----",
    "eyJ",
)

#: Airflow 3.3.2's ``DEFAULT_SENSITIVE_FIELDS`` (its API redacts values under these names at any depth).
SENSITIVE_FIELDS: frozenset[str] = frozenset(
    {
        "access_key",
        "access_token",
        "api_key",
        "apikey",
        "auth_header",
        "authorization",
        "bearer",
        "connection_string",
        "dsn",
        "passphrase",
        "passwd",
        "password",
        "private_key",
        "proxy",
        "proxy_password",
        "proxies",
        "secret",
        "service_account",
        "service_key",
        "token",
        "keyfile_dict",
        "webhook_url",
    }
)
_NON_WORD = re.compile(r"\W+")


def _extra_sensitive_names() -> frozenset[str]:
    # Airflow's [core] sensitive_var_conn_names extends the list (comma-separated).
    raw = os.environ.get("AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES", "")
    return frozenset(n.strip().lower() for n in raw.split(",") if n.strip())


def is_sensitive_key(name: object) -> bool:
    """Airflow's ``should_hide_value_for_key``: the name lower-cased, runs of non-word characters made
    ``_`` (``API-Key`` -> ``api_key``), then any sensitive field name as a substring."""
    if not isinstance(name, str):
        return False
    from credpath.model import SENSITIVE_NAMES

    normalized = _NON_WORD.sub("_", name.strip().lower())
    names = SENSITIVE_FIELDS | SENSITIVE_NAMES | _extra_sensitive_names()
    return any(word in normalized for word in names)


def _env_flag(name: str) -> bool:
    # airflow.configuration.getboolean's spellings.
    return os.environ.get(name, "").strip().lower() in ("t", "true", "1")


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
    def __init__(
        self,
        min_length: int = MIN_LENGTH,
        replacement: str = REPLACEMENT,
        *,
        content_patterns: bool | None = None,
    ) -> None:
        """``content_patterns``: mask the well-known credential formats too (None: Airflow's setting
        ``AIRFLOW__CORE__MASK_SECRETS_CONTENT_PATTERNS``, off when unset)."""
        self.min_length = min_length
        self.replacement = replacement
        self._known: set[str] = set()  # published secrets only
        self._batches: tuple[_Batch, ...] = ()  # sizes are distinct powers of two, largest first
        self._lock = threading.Lock()  # serializes registration; redaction never takes it
        if content_patterns is None:
            content_patterns = _env_flag(CONTENT_PATTERNS_ENV)
        self.content_patterns = content_patterns
        self._pattern_sources: dict[str, str] = dict(KNOWN_SECRET_PATTERNS)
        self._literals: tuple[str, ...] | None = _KNOWN_LITERALS  # None: a custom pattern, always run
        self._content: re.Pattern[str] = _compile_union(self._pattern_sources)

    def add_content_patterns(self, patterns: Mapping[str, str]) -> None:
        """Add named content patterns (Airflow's ``add_content_patterns``); a name already present is
        replaced. An invalid expression is a ValueError naming the pattern (never silently skipped)."""
        sources = dict(self._pattern_sources)
        for name, source in patterns.items():
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(
                    f"content pattern {name!r} is not a valid regular expression: {exc}"
                ) from None
            sources[name] = source
        with self._lock:
            self._pattern_sources = sources
            self._content = _compile_union(sources)
            self._literals = None  # a custom pattern has no known literal: run the union on every text

    def __len__(self) -> int:
        return len(self._known)

    def add(self, secret: str | None) -> None:
        if not secret or not isinstance(secret, str) or len(secret) < self.min_length:
            return
        if secret in self._known:  # safe without the lock: known means already published
            return
        with self._lock:
            # The URL-quoted forms: `quote(s, safe="")` (a URI's userinfo) and `quote(s)`, which keeps
            # "/" (Airflow's Connection masks that one).
            forms = (secret, quote(secret, safe=""), quote(secret))
            new = [v for v in dict.fromkeys(forms) if v not in self._known]
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

    def redact(self, text: str, replacement: str | None = None) -> str:
        if not text or not isinstance(text, str):
            return text
        mask = self.replacement if replacement is None else replacement
        text = self._redact_known(text, mask)
        if self.content_patterns:
            literals = self._literals
            if literals is None or any(literal in text for literal in literals):
                text = self._content.sub(mask, text)
        return text

    def _redact_known(self, text: str, mask: str) -> str:
        batches = self._batches
        if not batches:
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
            out.extend((text[pos:cur_start], mask))
            pos = cur_end
            cur_start, cur_end = start, end
        out.extend((text[pos:cur_start], mask, text[cur_end:]))
        return "".join(out)

    def redact_value(self, value: Any, name: str | None = None, replacement: str | None = None) -> Any:
        """A copy of ``value`` (a JSON-like structure) as Airflow's ``redact(value, name)`` returns it,
        without its gap: under a sensitive key every leaf is replaced, numbers and booleans included
        (None stays None: nothing to hide). Strings elsewhere are redacted as text."""
        mask = self.replacement if replacement is None else replacement
        return self._walk(value, name is not None and is_sensitive_key(name), mask, 0)

    def _walk(self, value: Any, hide: bool, mask: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:  # deeper than any real value: fail closed
            return mask
        if isinstance(value, Mapping):
            return {k: self._walk(v, hide or is_sensitive_key(k), mask, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._walk(v, hide, mask, depth + 1) for v in value]
        if value is None:
            return None
        if hide:
            return mask
        if isinstance(value, str):
            return self.redact(value, mask)
        return value

    def redact_text_value(self, text: str, name: str | None = None, replacement: str | None = None) -> str:
        """A stored value as text (a variable's value, an extra): JSON objects and arrays are parsed,
        redacted with :meth:`redact_value` and written back; any other text is masked whole under a
        sensitive ``name`` and redacted as text otherwise (what Airflow's variable API returns)."""
        mask = self.replacement if replacement is None else replacement
        if not isinstance(text, str):
            return str(self.redact_value(text, name, mask))
        if name is not None and is_sensitive_key(name):
            return mask
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                data = json.loads(text)
            except ValueError:
                pass
            else:
                redacted = self.redact_value(data, None, mask)
                # Unchanged: the text as stored (its own spacing and key order), not a re-dump.
                return text if redacted == data else json.dumps(redacted)
        return self.redact(text, mask)

    def clear(self) -> None:
        with self._lock:
            self._batches = ()
            self._known = set()


#: Nesting beyond which a structured value is replaced whole (a guard against self-reference).
_MAX_DEPTH = 100


def _compile_union(sources: Mapping[str, str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{source})" for source in sources.values()))


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


def redact_value(value: Any, name: str | None = None, masker: Masker | None = None) -> Any:
    """:meth:`Masker.redact_value` on ``masker`` (default: the process's masker)."""
    return (masker if masker is not None else _default_masker).redact_value(value, name)


def redact_text_value(text: str, name: str | None = None, masker: Masker | None = None) -> str:
    """:meth:`Masker.redact_text_value` on ``masker`` (default: the process's masker): the one function
    every output (web, CLI tables and JSON, explain) shows a stored value through."""
    return (masker if masker is not None else _default_masker).redact_text_value(text, name)


class MaskingFilter(logging.Filter):
    """A logging.Filter that redacts registered secrets from a record's message and traceback."""

    def __init__(self, masker: Masker | None = None) -> None:
        super().__init__()
        self.masker = masker if masker is not None else _default_masker

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
        record._credpath_masker = masker
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


_redacting_classes: dict[type, type] = {}


def _redacting_class(base: type) -> type:
    cls = _redacting_classes.get(base)
    if cls is None:

        def getMessage(self: logging.LogRecord) -> str:
            masker: Masker = self._credpath_masker  # type: ignore[attr-defined]
            return masker.redact(base.getMessage(self))  # type: ignore[attr-defined]

        cls = type(f"Masked{base.__name__}", (base,), {"getMessage": getMessage})
        _redacting_classes[base] = cls
    return cls
