"""Leak scan: 100,000+ audit events and spans produced over seeded secrets (passwords, tokens, sensitive
extras, JSON variables with nested secrets, secrets in exception messages, written values) contain none of
them, in clear or in a common encoding (base64, url-safe base64, url-quoted, hex, JSON-escaped)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import ahocorasick

from credpath import _audit
from credpath._cache import CacheSettings
from credpath._resilience import BreakerSettings
from credpath._search_path import SearchPath
from credpath.errors import BackendUnavailable
from credpath.model import Connection
from tests import otel_exporter
from tests.memory_backend import MemoryBackend

IDS = 100


def _secret(label: str) -> str:
    # Characters that every encoding changes: '/', '+', ' ', '"', '\\', non-ASCII.
    return f's3cr3t-{label}-{secrets.token_urlsafe(12)}/+ "\\é'


def _encodings(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret),
        raw.hex(),
        raw.hex().upper(),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return {f for f in forms if len(f) >= 8}


def _fixtures() -> tuple[dict[str, str], dict[str, str], list[str]]:
    seeded: list[str] = []
    connections, variables = {}, {}
    for n in range(IDS):
        password, token, key = _secret("pw"), _secret("token"), _secret("extra")
        seeded += [password, token, key]
        conn = Connection(
            conn_id=f"conn_{n}",
            conn_type="postgres",
            host="db.example",
            login="app",
            password=password,
            extra=json.dumps({"api_token": token, "nested": {"private_key": key}, "region": "eu"}),
        )
        connections[f"conn_{n}"] = conn.to_json()
        nested = _secret("nested")
        seeded.append(nested)
        variables[f"var_{n}"] = json.dumps({"db": {"password": nested, "hosts": ["a", "b"]}})
    return connections, variables, seeded


def test_no_secret_in_100k_events_and_spans(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="credpath")  # 100k DEBUG lines would only slow the test
    connections, variables, seeded = _fixtures()
    path = tmp_path / "audit.jsonl"
    _audit.configure(_audit.AuditSettings())
    _audit.configure(
        _audit.AuditSettings(
            enabled=True,
            path=path,
            otel=True,
            cached="all",
            queue_size=200_000,
            fingerprint_key=b"deployment-key",
        )
    )
    exporter = otel_exporter.install()
    try:
        mem = MemoryBackend(connections=connections, variables=variables)
        failing = MemoryBackend()
        failing.fail_with = RuntimeError(f"cannot parse {seeded[0]}")  # a foreign error holding a secret
        misses = [(name, MemoryBackend()) for name in ("env", "files")]  # store calls: spans too
        always = SearchPath(
            [*misses, ("mem", mem)],
            cache=CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=0.0),
        )
        cached = SearchPath([("mem", mem)], cache=CacheSettings(jitter=0.0))
        broken = SearchPath([("bad", failing)], breaker=BreakerSettings(enabled=False))
        lookups = 0
        for round_ in range(150):
            for n in range(IDS):
                always.get_connection(f"conn_{n}")
                cached.get_variable(f"var_{n}", deserialize_json=True)
                lookups += 2
            if round_ % 10 == 0:
                for n in range(IDS):
                    written = _secret("written")
                    seeded.append(written)
                    cached.set_variable(f"new_{n}", written)
                    try:
                        broken.get_variable(f"var_{n}")
                    except BackendUnavailable:
                        pass
                cached.prefetch(variables=[f"var_{n}" for n in range(IDS)])
        _audit.flush(30.0)
        finished = exporter.get_finished_spans()
        events = path.read_text()
    finally:
        _audit.configure(_audit.AuditSettings())
        exporter.clear()
    produced = events.count("\n") + len(finished)
    assert produced >= 100_000, produced
    assert _audit.counters().get("dropped", 0) == 0

    automaton: Any = ahocorasick.Automaton()
    for secret in seeded:
        for form in _encodings(secret):
            automaton.add_word(form, form)
    automaton.make_automaton()
    span_text = "\n".join(
        f"{s.name} {dict(s.attributes or {})} {s.status.description} "
        + " ".join(f"{e.name} {dict(e.attributes or {})}" for e in s.events)
        for s in finished
    )
    hits = [found for text in (events, span_text) for _end, found in automaton.iter(text)]
    assert not hits, f"{len(hits)} seeded secret(s) found in events or spans"
    assert "s3cr3t" not in events and "s3cr3t" not in span_text
