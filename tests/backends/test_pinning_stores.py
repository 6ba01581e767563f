"""Pinned reads against the real servers: OpenBao KV v2, moto Secrets Manager (several versions and
stages), and the GCP and Azure fakes (which keep versions as the services do).

The contract suite checks that each kept version reads back (credpath.testing); here: what a version that
does not exist, a soft-deleted version, a KV v1 mount and a moving stage do, through the search path, and
that the store is asked once per version whatever rotation happens to the id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from credpath._cache import CacheSettings
from credpath._lookup.pinned import VersionNotFound
from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath.errors import ConfigError, NotFound
from credpath.testing import reported_version
from tests.conftest import assert_no_secret


def _path(name: str, backend: Any) -> SearchPath:
    return SearchPath([(name, backend)], cache=CacheSettings(ttl=300.0, jitter=0.0), masker=Masker())


def _pw(n: int) -> str:
    return f"pw-{n}-s3cr3t"


def _uri(n: int) -> str:
    return f"postgres://app:{_pw(n)}@db{n}.example:5432/app"


# --- OpenBao KV v2 ---------------------------------------------------------------------------------------


def test_vault_reads_each_version_with_the_version_query(vault_harness: Any) -> None:
    h = vault_harness
    for n in (1, 2, 3):
        h.seed("connection", "pg", _uri(n))
    sp = _path("vault", h.make_backend())
    assert [sp.get_connection("pg", version=n).password for n in (1, 2, 3)] == [_pw(1), _pw(2), _pw(3)]
    assert sp.get_connection("pg@2").host == "db2.example"
    assert sp.get_connection("pg").password == _pw(3)
    assert sp.explain("connection", "pg", version="1").version == "1"
    assert h.log.matching("data/connections/pg?version=1")


def test_vault_version_that_does_not_exist_or_was_deleted_is_not_found(vault_harness: Any) -> None:
    h = vault_harness
    for n in (1, 2):
        h.seed("variable", "api_token", f"tok-{n}-s3cr3t")
    h.server.admin.secrets.kv.v2.delete_secret_versions(
        path="variables/api_token", versions=[1], mount_point=h.mount
    )
    sp = _path("vault", h.make_backend())
    for version in ("1", "9"):
        with pytest.raises(VersionNotFound) as caught:
            sp.get_variable("api_token", version=version)
        message = str(caught.value)
        assert "'api_token'" in message and repr(version) in message and "\n" not in message
        assert_no_secret(message)
    assert sp.get_variable("api_token", version="2") == "tok-2-s3cr3t"


def test_vault_kv1_mount_refuses_a_pinned_read_in_one_line(openbao: Any, openbao_kv1: str) -> None:
    from credpath.backends.vault import VaultBackend

    openbao.put(openbao_kv1, 1, "variables/k", {"value": "v1-s3cr3t"})
    backend = VaultBackend(
        url=openbao.addr, token=openbao.root_token, mount_point=openbao_kv1, kv_engine_version="auto"
    )
    try:
        sp = _path("vault", backend)
        with pytest.raises(ConfigError) as caught:
            sp.get_variable("k", version="1")
        message = str(caught.value)
        assert "KV v1" in message and "'vault'" in message and "\n" not in message
        assert_no_secret(message)
        assert sp.get_variable("k") == "v1-s3cr3t"  # the plain read is unaffected
    finally:
        backend.close()


# --- moto Secrets Manager --------------------------------------------------------------------------------


def _sm_versions(h: Any, name: str, values: list[str]) -> list[str]:
    ids = []
    for value in values:
        token = str(uuid.uuid4())
        try:
            answer = h.client.create_secret(Name=name, SecretString=value, ClientRequestToken=token)
        except h.client.exceptions.ResourceExistsException:
            answer = h.client.put_secret_value(SecretId=name, SecretString=value, ClientRequestToken=token)
        ids.append(answer["VersionId"])
    return ids


def test_secrets_manager_reads_a_version_id_and_a_stage(aws_secrets_manager_harness: Any) -> None:
    h = aws_secrets_manager_harness
    name = h.secret_id("connection", "pg")
    v1, v2, v3 = _sm_versions(h, name, [_uri(1), _uri(2), _uri(3)])
    sp = _path("sm", h.make_backend())
    assert sp.get_connection("pg", version=v1).password == _pw(1)
    assert sp.get_connection(f"pg@{v2}").password == _pw(2)
    assert sp.get_connection("pg", version="AWSPREVIOUS").password == _pw(2)
    assert sp.get_connection("pg", version="stage:AWSCURRENT").password == _pw(3)
    h.client.update_secret_version_stage(SecretId=name, VersionStage="blue", MoveToVersionId=v1)
    assert sp.get_connection("pg", version="stage:blue").password == _pw(1)
    explanation = sp.explain("connection", "pg", version=v1)
    assert explanation.version is not None and explanation.version.startswith(v1)
    with pytest.raises(VersionNotFound) as caught:
        sp.get_connection("pg", version=str(uuid.uuid4()))
    assert "'pg'" in str(caught.value)
    assert_no_secret(str(caught.value))
    with pytest.raises(ConfigError, match="VersionId"):  # neither a VersionId nor a stage
        sp.get_connection("pg", version="v1")
    assert v3


def test_secrets_manager_stage_moves_so_it_is_never_cached(aws_secrets_manager_harness: Any) -> None:
    h = aws_secrets_manager_harness
    name = h.secret_id("variable", "api_token")
    _sm_versions(h, name, ["tok-1-s3cr3t", "tok-2-s3cr3t"])
    sp = _path("sm", h.make_backend())
    assert sp.get_variable("api_token", version="AWSPREVIOUS") == "tok-1-s3cr3t"
    _sm_versions(h, name, ["tok-3-s3cr3t"])  # a rotation moves AWSPREVIOUS to version 2
    assert sp.get_variable("api_token", version="AWSPREVIOUS") == "tok-2-s3cr3t"


def test_a_pinned_version_costs_one_store_read_across_rotations(aws_secrets_manager_harness: Any) -> None:
    from tests.servers.moto import CallLog

    h = aws_secrets_manager_harness
    name = h.secret_id("variable", "db_password")
    (v1,) = _sm_versions(h, name, ["old-s3cr3t"])
    backend = h.make_backend()
    calls = CallLog.attach(backend.client)
    sp = _path("sm", backend)
    assert sp.get_variable("db_password", version=v1) == "old-s3cr3t"
    assert sp.get_variable("db_password") == "old-s3cr3t"
    before = len(calls.calls)
    for n in range(3):
        _sm_versions(h, name, [f"new-{n}-s3cr3t"])  # rotated outside credpath
        sp.invalidate("variable", "db_password")  # `credpath cache invalidate db_password`
        assert sp.get_variable("db_password") == f"new-{n}-s3cr3t"
        assert sp.get_variable("db_password", version=v1) == "old-s3cr3t"
    assert len(calls.calls) == before + 3  # the latest three times; the pinned version never again


# --- GCP and Azure fakes ---------------------------------------------------------------------------------


def test_gcp_reads_a_version_number(gcp_secret_manager_harness: Any) -> None:
    h = gcp_secret_manager_harness
    for n in (1, 2):
        h.seed("connection", "pg", _uri(n))
    backend = h.make_backend()
    sp = _path("gcp", backend)
    assert sp.get_connection("pg", version="1").password == _pw(1)
    assert sp.get_connection("pg@2").password == _pw(2)
    assert reported_version(backend.get_conn_value, "pg") == "2"
    with pytest.raises(VersionNotFound):
        sp.get_connection("pg", version="7")
    with pytest.raises(ConfigError, match="version number"):
        sp.get_connection("pg", version="latest")  # "latest" moves: no pin


def test_azure_reads_a_version_id(azure_key_vault_harness: Any) -> None:
    h = azure_key_vault_harness
    h.seed("variable", "api_token", "tok-1-s3cr3t")
    backend = h.make_backend()
    first = reported_version(backend.get_variable, "api_token")
    h.seed("variable", "api_token", "tok-2-s3cr3t")
    sp = _path("azure", backend)
    assert sp.get_variable("api_token", version=first) == "tok-1-s3cr3t"
    assert sp.get_variable("api_token") == "tok-2-s3cr3t"
    with pytest.raises(NotFound) as caught:
        sp.get_variable("api_token", version="0" * 32)
    assert "'api_token'" in str(caught.value) and "0" * 32 in str(caught.value)


# --- nothing leaks ---------------------------------------------------------------------------------------


def test_pinned_reads_leak_nothing(
    aws_secrets_manager_harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    h = aws_secrets_manager_harness
    name = h.secret_id("connection", "pg")
    v1, _ = _sm_versions(h, name, [_uri(1), _uri(2)])
    caplog.set_level(logging.DEBUG)
    sp = _path("sm", h.make_backend())
    conn = sp.get_connection("pg", version=v1)
    texts = [repr(conn), str(sp.explain("connection", "pg", version=v1))]
    for bad in (str(uuid.uuid4()), "not a version", "AWSPENDING"):
        try:
            sp.get_connection("pg", version=bad)
        except Exception as exc:
            texts += [str(exc), repr(exc)]
    texts.append(caplog.text)
    assert _pw(1) not in sp.masker.redact(f"password {_pw(1)}")  # registered with the masker
    for text in texts:
        assert_no_secret(text, _pw(1), _pw(2))
