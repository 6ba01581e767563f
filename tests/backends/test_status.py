"""The status-to-error tables (``backends/_status.py``), one per store: every declared status and code maps
to its own row, an answer no row names maps to the generic ``BackendError``, and each row's message is the
one the store's tests assert against its server or fake."""

from __future__ import annotations

from typing import Any

import pytest

from credpath.backends._status import Row, StatusTable
from credpath.errors import AccessDenied, BackendError, Throttled


def _tables() -> dict[str, StatusTable]:
    from credpath.backends import azure_key_vault, gcp_secret_manager, kubernetes_secrets
    from credpath.backends.vault import backend as vault_backend
    from credpath.backends.vault import session as vault_session

    tables = {
        "vault": vault_session.STATUS_TABLE,
        "vault-operation": vault_backend.OPERATION_TABLE,
        "kubernetes": kubernetes_secrets.STATUS_TABLE,
        "gcp": gcp_secret_manager.STATUS_TABLE,
        "azure": azure_key_vault.STATUS_TABLE,
    }
    try:
        from credpath.backends import _aws
    except ImportError:  # botocore not installed
        return tables
    return {**tables, "aws": _aws.STATUS_TABLE}


TABLES = _tables()
#: Fields enough for every message of every table.
FIELDS: dict[str, Any] = {
    "url": "http://vault:8200",
    "what": "reading x",
    "where": "reading x",
    "action": "reading m/p",
    "status": 0,
    "detail": "",
    "reason": "",
    "phrase": "Forbidden",
    "mount": "m",
    "path": "p",
    "auth_type": "token",
    "capability": "read",
    "code": "C",
    "code_or_status": "C",
    "code_or_403": 403,
    "caller": "arn:aws:iam::123456789012:user/u",
    "tries": "",
    "version": "latest",
    "state": "DISABLED",
    "name": "NotFound",
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_row_takes_the_statuses_and_codes_it_declares(name: str) -> None:
    table = TABLES[name]
    for row in table.rows:
        for status in row.statuses:
            assert table.row(status) is row, (name, status)
        for code in row.codes:
            assert table.row(None, code) is row, (name, code)
        if row.server_errors:
            assert table.row(500) is row and table.row(599) is row
        assert row.error is not None and issubclass(row.error, BackendError)
        row.render({**FIELDS, "status": next(iter(row.statuses), 500)})  # every field it names exists


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize(("status", "code"), [(418, None), (400, "NoSuchCode"), (None, None)])
def test_an_answer_no_row_names_is_the_generic_error(name: str, status: int | None, code: str | None) -> None:
    table = TABLES[name]
    assert table.row(status, code) is table.default
    assert table.default.error is BackendError
    error = table.error(status, code, {**FIELDS, "status": status})
    assert type(error) is BackendError


# (table, status, code, fields beyond FIELDS, class, message): what the stores said before the tables.
CASES = [
    (
        "vault",
        503,
        "sealed",
        {},
        BackendError,
        "Vault at http://vault:8200 is sealed (HTTP 503) while reading x",
    ),
    (
        "vault",
        429,
        None,
        {},
        Throttled,
        "Vault at http://vault:8200 is throttling requests (HTTP 429) while reading x",
    ),
    (
        "vault",
        500,
        None,
        {"status": 500, "detail": ": internal error"},
        BackendError,
        "Vault at http://vault:8200 answered HTTP 500 while reading x: internal error",
    ),
    # A 503 that is not a sealed server's is an answer like any other.
    (
        "vault",
        503,
        None,
        {"status": 503},
        BackendError,
        "Vault at http://vault:8200 answered HTTP 503 while reading x",
    ),
    (
        "vault-operation",
        403,
        None,
        {"capability": "create"},
        AccessDenied,
        "permission denied on m/p (auth_type 'token'); the token's policy needs 'create' on this path",
    ),
    (
        "vault-operation",
        503,
        "sealed",
        {},
        BackendError,
        "Vault at http://vault:8200 is sealed (HTTP 503) while reading m/p",
    ),
    ("vault-operation", 400, None, {"status": 400}, BackendError, "reading m/p failed (HTTP 400)"),
    (
        "kubernetes",
        401,
        None,
        {"status": 401, "phrase": "Unauthorized"},
        AccessDenied,
        "reading x: access denied (HTTP 401 Unauthorized)",
    ),
    ("kubernetes", 403, None, {"status": 403}, AccessDenied, "reading x: access denied (HTTP 403 Forbidden)"),
    ("kubernetes", 503, None, {"status": 503}, BackendError, "reading x failed (HTTP 503)"),
    (
        "kubernetes",
        400,
        None,
        {"status": 400, "reason": " BadRequest"},
        BackendError,
        "reading x failed (HTTP 400 BadRequest)",
    ),
    ("gcp", 403, None, {"code": 403}, AccessDenied, "reading x: permission denied (403)"),
    ("gcp", 401, None, {"code": 401}, AccessDenied, "reading x: permission denied (401)"),
    (
        "gcp",
        400,
        "DESTROYED",
        {"state": "DESTROYED"},
        BackendError,
        "reading x: version latest is DESTROYED (Secret Manager does not fall back to an older version; "
        "enable it or add a new version)",
    ),
    ("gcp", 400, None, {"name": "BadRequest", "status": 400}, BackendError, "reading x: BadRequest (400)"),
    ("azure", 403, "SecretDisabled", {}, BackendError, "reading x: the secret is disabled in the vault"),
    ("azure", 403, None, {"code_or_403": "Forbidden"}, AccessDenied, "reading x: access denied (Forbidden)"),
    (
        "azure",
        500,
        None,
        {"detail": "HTTP 500 InternalError"},
        BackendError,
        "reading x: HTTP 500 InternalError",
    ),
]
AWS_CASES = [
    (
        "aws",
        400,
        "AccessDeniedException",
        {"code": "AccessDeniedException"},
        AccessDenied,
        "reading x: access denied (AccessDeniedException) for arn:aws:iam::123456789012:user/u",
    ),
    (
        "aws",
        403,
        "",
        {"code": ""},
        AccessDenied,
        "reading x: access denied () for arn:aws:iam::123456789012:user/u",
    ),
    (
        "aws",
        400,
        "ThrottlingException",
        {"code_or_status": "ThrottlingException", "tries": " after 3 attempt(s)"},
        Throttled,
        "reading x: throttled (ThrottlingException) after 3 attempt(s)",
    ),
    ("aws", 429, "", {"code_or_status": 429}, Throttled, "reading x: throttled (429)"),
    (
        "aws",
        503,
        "ServiceUnavailable",
        {"status": 503, "code": "ServiceUnavailable"},
        BackendError,
        "reading x: server error 503 (ServiceUnavailable)",
    ),
    # Denied before throttled before a server error, as the if-chain it replaced.
    (
        "aws",
        500,
        "AccessDenied",
        {"code": "AccessDenied"},
        AccessDenied,
        "reading x: access denied (AccessDenied) for arn:aws:iam::123456789012:user/u",
    ),
    (
        "aws",
        400,
        "ValidationException",
        {"status": 400, "code": "ValidationException"},
        BackendError,
        "reading x: ValidationException (HTTP 400)",
    ),
]


@pytest.mark.parametrize(
    ("name", "status", "code", "fields", "cls", "message"),
    CASES + (AWS_CASES if "aws" in TABLES else []),
    ids=lambda v: str(v)[:30] if not isinstance(v, dict) else "",
)
def test_each_store_says_what_it_said(
    name: str, status: int, code: str | None, fields: dict[str, Any], cls: type, message: str
) -> None:
    error = TABLES[name].error(status, code, {**FIELDS, "status": status, **fields})
    assert type(error) is cls
    assert str(error) == message


def test_a_callable_field_is_called_only_when_the_message_names_it() -> None:
    calls: list[str] = []

    def caller() -> str:
        calls.append("sts")  # in the AWS table this costs a GetCallerIdentity request
        return "arn"

    table = StatusTable(
        "test",
        rows=(Row(AccessDenied, "{what}: denied for {caller}", statuses=frozenset({403})),),
        default=Row(BackendError, "{what}: HTTP {status}"),
    )
    assert str(table.error(500, None, {"what": "w", "status": 500, "caller": caller})) == "w: HTTP 500"
    assert calls == []
    assert str(table.error(403, None, {"what": "w", "status": 403, "caller": caller})) == "w: denied for arn"
    assert calls == ["sts"]


def test_make_builds_the_error_in_the_backends_voice() -> None:
    table = StatusTable("test", rows=(), default=Row(BackendError, "{what} failed"))
    made = table.error(
        None, None, {"what": "w"}, lambda message, cls: cls(f"backend 'x': {message}", backend="x")
    )
    assert str(made) == "backend 'x': w failed" and made.backend == "x"


def test_rows_match_in_order_and_server_errors_from_500_up() -> None:
    first = Row(AccessDenied, "a", statuses=frozenset({403}))
    second = Row(Throttled, "b", statuses=frozenset({403, 429}), codes=frozenset({"Slow"}))
    server = Row(BackendError, "c", server_errors=True)
    table = StatusTable("test", rows=(first, second, server), default=Row(BackendError, "d"))
    assert table.row(403) is first
    assert table.row(429) is second and table.row(200, "Slow") is second
    assert table.row(500) is server and table.row(504) is server
    assert table.row(499) is table.default
