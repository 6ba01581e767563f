"""VaultBackend authentication and session against OpenBao: every method OpenBao serves here, the exact
login request of those it cannot serve, one login per process, renewal, re-login, and request counts."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from credpath.backends.vault import VaultBackend, sign_jwt_rs256
from credpath.backends.vault import auth as vault_auth
from credpath.backends.vault import session as vault
from credpath.errors import AccessDenied, BackendError, BackendTimeout, ConfigError
from tests.conftest import assert_no_secret
from tests.servers._util import free_port, require_binary, stop_process, wait_for_port
from tests.servers.openbao import OpenBao, RequestLog, VaultBackends

SECRET = "value-s3cr3t-auth"
READER_POLICY = 'path "secret/data/auth-tests/*" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
def auth_setup(openbao: OpenBao) -> OpenBao:
    openbao.policy("auth-reader", READER_POLICY)
    openbao.put("secret", 2, "auth-tests/variables/v", {"value": SECRET})
    return openbao


@pytest.fixture
def make(auth_setup: OpenBao) -> Iterator[Callable[..., VaultBackend]]:
    backends = VaultBackends(url=auth_setup.addr, variables_path="auth-tests/variables")
    yield backends
    backends.close()


def rsa_key() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- token ---------------------------------------------------------------------------------------------


def test_token_kwarg_token_path_and_vault_token_env(auth_setup: OpenBao, make, tmp_path, monkeypatch) -> None:
    token = auth_setup.admin.auth.token.create(policies=["auth-reader"], ttl="10m")["auth"]["client_token"]
    assert make(token=token).get_variable("v") == SECRET
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    assert make(token_path=str(token_file)).get_variable("v") == SECRET
    monkeypatch.setenv("VAULT_TOKEN", token)
    assert make().get_variable("v") == SECRET


def test_one_request_per_uncached_read_and_no_lookup_self_before_reads(auth_setup: OpenBao, make) -> None:
    role_id, secret_id = auth_setup.approle(unique("count"), ["auth-reader"], token_ttl="10m")
    backend = make(auth_type="approle", role_id=role_id, secret_id=secret_id)
    log = RequestLog().attach(backend)
    assert backend.get_variable("v") == SECRET  # first use: login + read (KV v2 assumed, as Airflow does)
    assert log.requests[0] == "POST /v1/auth/approle/login"
    first = len(log)
    for _ in range(20):
        assert backend.get_variable("v") == SECRET
        assert backend.get_variable("missing") is None
    reads = log.requests[first:]
    assert len(reads) == 40
    assert all(r.startswith("GET /v1/secret/data/auth-tests/variables/") for r in reads)
    assert not log.matching("lookup-self")


def test_instances_with_the_same_settings_share_one_login(auth_setup: OpenBao, make) -> None:
    role_id, secret_id = auth_setup.approle(unique("shared"), ["auth-reader"], token_ttl="10m")
    first = make(auth_type="approle", role_id=role_id, secret_id=secret_id, kv_engine_version=2)
    log = RequestLog().attach(first)
    for _ in range(5):
        # Airflow's Task SDK rebuilt the backend per lookup: a login per secret. Here: one per process.
        backend = VaultBackend(
            url=auth_setup.addr,
            auth_type="approle",
            role_id=role_id,
            secret_id=secret_id,
            kv_engine_version=2,
            variables_path="auth-tests/variables",
        )
        assert backend.get_variable("v") == SECRET
    assert len(log.matching("auth/approle/login")) == 1
    assert len(log) == 6
    assert first.session.logins == 1


def test_tokens_with_a_5s_ttl_keep_working_for_20s_of_reads(auth_setup: OpenBao, make, monkeypatch) -> None:
    # A handed-in token's TTL is learnt once the process has used it TOKEN_LOOKUP_DELAY s; here at once.
    monkeypatch.setattr(vault, "TOKEN_LOOKUP_DELAY", 0.0)
    role_id, secret_id = auth_setup.approle(
        unique("short"), ["auth-reader"], token_ttl="5s", token_max_ttl="10m"
    )
    logged_in = make(auth_type="approle", role_id=role_id, secret_id=secret_id)
    static_token = auth_setup.admin.auth.token.create(policies=["auth-reader"], ttl="5s", renewable=True)
    handed_in = make(token=static_token["auth"]["client_token"])
    assert static_token["auth"]["lease_duration"] == 5
    logs = [RequestLog().attach(logged_in), RequestLog().attach(handed_in)]
    reads = 0
    started = time.monotonic()
    while time.monotonic() - started < 20:
        assert logged_in.get_variable("v") == SECRET
        assert handed_in.get_variable("v") == SECRET
        reads += 1
        time.sleep(0.25)
    for backend, log in zip((logged_in, handed_in), logs, strict=True):
        renewals = len(log.matching("auth/token/renew-self"))
        assert renewals >= 5  # 20 s at a renewal every ~3.3 s
        assert backend.session.renewals == renewals
        assert backend.session.logins == 1
        # Every request accounted for: first use (login or lookup-self), reads, renewals.
        assert len(log) == 1 + reads + renewals
        assert 403 not in log.statuses and len(log.matching("/data/")) == reads


def test_revoked_token_is_replaced_by_one_new_login(auth_setup: OpenBao, make) -> None:
    mount = auth_setup.enable_auth("approle", unique("approle"))
    role_id, secret_id = auth_setup.approle("revoked", ["auth-reader"], mount=mount, token_ttl="10m")
    backend = make(auth_type="approle", auth_mount_point=mount, role_id=role_id, secret_id=secret_id)
    assert backend.get_variable("v") == SECRET
    auth_setup.admin.sys.revoke_prefix(f"auth/{mount}/")
    log = RequestLog().attach(backend)
    assert backend.get_variable("v") == SECRET
    assert log.requests == [
        "GET /v1/secret/data/auth-tests/variables/v",  # 403: token revoked
        "GET /v1/auth/token/lookup-self",  # 403 too: the token is dead, not the policy
        f"POST /v1/auth/{mount}/login",
        "GET /v1/secret/data/auth-tests/variables/v",
    ]
    assert backend.session.logins == 2


def test_policy_denial_does_not_log_in_again(auth_setup: OpenBao, make) -> None:
    auth_setup.put("secret", 2, "elsewhere/variables/v", {"value": SECRET})
    role_id, secret_id = auth_setup.approle(unique("denied"), ["auth-reader"], token_ttl="10m")
    backend = make(
        auth_type="approle", role_id=role_id, secret_id=secret_id, variables_path="elsewhere/variables"
    )
    with pytest.raises(AccessDenied) as info:
        backend.get_variable("v")
    assert "secret/elsewhere/variables/v" in str(info.value) and "'approle'" in str(info.value)
    assert_no_secret(str(info.value), secret_id)
    assert backend.session.logins == 1


def test_revoked_static_token_is_a_clear_error_and_token_path_is_reread(
    auth_setup: OpenBao, make, tmp_path
) -> None:
    admin = auth_setup.admin
    token = admin.auth.token.create(policies=["auth-reader"], ttl="10m")["auth"]["client_token"]
    static = make(token=token)
    assert static.get_variable("v") == SECRET
    admin.auth.token.revoke(token)
    with pytest.raises(AccessDenied, match="expired or was revoked") as info:
        static.get_variable("v")
    assert token not in str(info.value)

    token_file = tmp_path / "agent-token"
    first = admin.auth.token.create(policies=["auth-reader"], ttl="10m")["auth"]["client_token"]
    token_file.write_text(first)
    agent = make(token_path=str(token_file))
    assert agent.get_variable("v") == SECRET
    # A Vault agent rotates the token in the file: the backend picks the new one up on the 403.
    admin.auth.token.revoke(first)
    token_file.write_text(
        admin.auth.token.create(policies=["auth-reader"], ttl="10m")["auth"]["client_token"]
    )
    assert agent.get_variable("v") == SECRET


# --- methods OpenBao serves here -------------------------------------------------------------------------


def test_userpass_login_and_failure_message(auth_setup: OpenBao, make) -> None:
    auth_setup.enable_auth("userpass")
    password = "pw-s3cr3t-user"
    auth_setup.admin.auth.userpass.create_or_update_user("alice", password, policies=["auth-reader"])
    assert make(auth_type="userpass", username="alice", password=password).get_variable("v") == SECRET
    bad = make(auth_type="userpass", username="alice", password="wrong-s3cr3t")
    with pytest.raises(AccessDenied) as info:
        bad.get_variable("v")
    message = str(info.value)
    assert "auth_type 'userpass'" in message and "auth/userpass" in message and "\n" not in message
    assert_no_secret(message, "wrong-s3cr3t")


@pytest.fixture(scope="module")
def jwt_key(auth_setup: OpenBao) -> str:
    """A local RSA key whose public half OpenBao's jwt method trusts, at auth/jwt and at auth/kubernetes."""
    private, public = rsa_key()
    for path in ("jwt", "kubernetes"):
        auth_setup.enable_auth("jwt", path)
        auth_setup.admin.write(f"auth/{path}/config", jwt_validation_pubkeys=[public])
        auth_setup.admin.write(
            f"auth/{path}/role/reader",
            role_type="jwt",
            user_claim="sub",
            bound_audiences=["credpath-test"],
            token_policies=["auth-reader"],
            token_ttl="10m",
        )
    return private


def signed_jwt(private_key: str) -> str:
    now = int(time.time())
    return sign_jwt_rs256({"sub": "svc", "aud": "credpath-test", "iat": now, "exp": now + 300}, private_key)


def test_jwt_login_with_token_and_token_path(auth_setup: OpenBao, jwt_key: str, make, tmp_path) -> None:
    token = signed_jwt(jwt_key)
    assert make(auth_type="jwt", jwt_role="reader", jwt_token=token).get_variable("v") == SECRET
    path = tmp_path / "jwt"
    path.write_text(token)
    backend = make(auth_type="jwt", jwt_role="reader", jwt_token_path=str(path))
    log = RequestLog().attach(backend)
    assert backend.get_variable("v") == SECRET
    assert log.entries[0][:2] == ("POST", "/v1/auth/jwt/login")
    # A JWT signed by another key is refused by the server.
    other_key, _ = rsa_key()
    with pytest.raises(AccessDenied, match="auth_type 'jwt'"):
        make(auth_type="jwt", jwt_role="reader", jwt_token=signed_jwt(other_key)).get_variable("v")


def test_kubernetes_style_login_through_the_jwt_method(
    auth_setup: OpenBao, jwt_key: str, make, tmp_path
) -> None:
    # OpenBao's kubernetes method needs a TokenReview API; its login request (role + service-account JWT at
    # auth/kubernetes/login) is the jwt method's, so a jwt mount at auth/kubernetes serves it.
    sa_token = tmp_path / "serviceaccount-token"
    sa_token.write_text(signed_jwt(jwt_key))
    backend = make(auth_type="kubernetes", kubernetes_role="reader", kubernetes_jwt_path=str(sa_token))
    log = RequestLog().attach(backend)
    assert backend.get_variable("v") == SECRET
    method, path, body = log.entries[0]
    assert (method, path, body["role"]) == ("POST", "/v1/auth/kubernetes/login", "reader")


@pytest.fixture(scope="module")
def tls_setup(openbao_tls: OpenBao, tmp_path_factory) -> tuple[OpenBao, str]:
    """TLS server whose cert auth method trusts a private client CA; returns (server, client pem path)."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("client.example", common_name="client.example")
    client_pem = tmp_path_factory.mktemp("client") / "client.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    openbao_tls.policy("auth-reader", READER_POLICY)
    openbao_tls.put("secret", 2, "auth-tests/variables/v", {"value": SECRET})
    openbao_tls.enable_auth("cert")
    openbao_tls.admin.write(
        "auth/cert/certs/web",
        certificate=ca.cert_pem.bytes().decode(),
        token_policies=["auth-reader"],
        token_ttl=600,
    )
    return openbao_tls, str(client_pem)


def test_cert_login_with_a_tls_client_certificate(tls_setup) -> None:
    server, client_pem = tls_setup
    backend = VaultBackend(
        url=server.addr,
        auth_type="cert",
        cert=client_pem,
        role_id="web",
        verify=server.ca_cert,
        variables_path="auth-tests/variables",
    )
    log = RequestLog().attach(backend)
    assert backend.get_variable("v") == SECRET
    assert log.entries[0] == ("POST", "/v1/auth/cert/login", {"name": "web"})
    backend.close()


def test_verify_applies_to_the_session(tls_setup) -> None:
    server, _ = tls_setup
    kwargs: dict[str, Any] = {
        "url": server.addr,
        "token": server.root_token,
        "variables_path": "auth-tests/variables",
    }
    assert VaultBackend(verify=server.ca_cert, **kwargs).get_variable("v") == SECRET
    untrusted = VaultBackend(**kwargs)  # default verify=True: the dev CA is not in the system store
    with pytest.raises(BackendError, match="SSLError") as info:
        untrusted.get_variable("v")
    assert server.addr in str(info.value)
    untrusted.close()


def test_proxies_and_timeout_apply_to_the_session(auth_setup: OpenBao) -> None:
    closed = free_port()
    backend = VaultBackend(
        url=auth_setup.addr,
        token=auth_setup.root_token,
        proxies={"http": f"http://proxyuser:proxy-s3cr3t@127.0.0.1:{closed}"},
        timeout=3,
    )
    with pytest.raises(BackendError, match="ProxyError") as info:
        backend.get_variable("v")
    assert_no_secret(str(info.value))
    backend.close()


# --- methods OpenBao cannot serve here: the exact login request --------------------------------------------


def login_attempt(server: OpenBao, **kwargs: Any) -> tuple[tuple[str, str, Any], AccessDenied]:
    """Try a login against OpenBao (which lacks the plugin and answers 403); return the request and error."""
    backend = VaultBackend(url=server.addr, **kwargs)
    log = RequestLog().attach(backend)
    with pytest.raises(AccessDenied) as info:
        backend.get_variable("v")
    backend.close()
    assert len(log) == 1
    assert "\n" not in str(info.value)
    return log.entries[0], info.value


@pytest.mark.parametrize("method", ["ldap", "radius"])
def test_ldap_and_radius_post_the_password_to_login_username(openbao: OpenBao, method: str) -> None:
    request, error = login_attempt(
        openbao,
        auth_type=method,
        username="bob smith",
        password="pw-s3cr3t-ldap",
        radius_host="radius.example",
    )
    assert request == ("POST", f"/v1/auth/{method}/login/bob%20smith", {"password": "pw-s3cr3t-ldap"})
    assert f"auth_type {method!r}" in str(error)
    assert_no_secret(str(error))


def test_github_login_sends_the_token(openbao: OpenBao) -> None:
    request, _ = login_attempt(openbao, auth_type="github", token="ghp-s3cr3t", auth_mount_point="gh")
    assert request == ("POST", "/v1/auth/gh/login", {"token": "ghp-s3cr3t"})


def test_gcp_login_signs_a_jwt_with_the_service_account_key(openbao: OpenBao, tmp_path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    private, public = rsa_key()
    keyfile = {
        "client_email": "sa@proj.iam.gserviceaccount.com",
        "private_key": private,
        "private_key_id": "kid1",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(keyfile))
    for source in ({"gcp_key_path": str(path)}, {"gcp_keyfile_dict": keyfile}):
        (method, url, body), _ = login_attempt(openbao, auth_type="gcp", role_id="gcp-role", **source)
        assert (method, url, body["role"]) == ("POST", "/v1/auth/gcp/login", "gcp-role")
        header_b64, claims_b64, signature_b64 = body["jwt"].split(".")
        pad = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
        assert json.loads(pad(header_b64)) == {"alg": "RS256", "typ": "JWT", "kid": "kid1"}
        claims = json.loads(pad(claims_b64))
        assert claims["sub"] == keyfile["client_email"] and claims["aud"] == "vault/gcp-role"
        assert claims["exp"] - claims["iat"] == 900 and abs(claims["iat"] - time.time()) < 60
        key = serialization.load_pem_public_key(public.encode())
        key.verify(
            pad(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )


def test_azure_logs_in_with_an_access_token(openbao: OpenBao, monkeypatch) -> None:
    # No Azure AD here: the token acquisition (azure-identity) is the one thing replaced.
    monkeypatch.setattr(vault_auth, "azure_jwt", lambda settings: "azure-access-s3cr3t")
    request, error = login_attempt(
        openbao,
        auth_type="azure",
        role_id="az-role",
        azure_tenant_id="tenant",
        azure_resource="https://vault.example",
    )
    assert request == ("POST", "/v1/auth/azure/login", {"role": "az-role", "jwt": "azure-access-s3cr3t"})
    assert_no_secret(str(error))


@pytest.fixture
def moto_sts(tmp_path) -> Iterator[str]:
    """A private moto server (its STS answers AssumeRole); tests/servers/moto.py belongs to another suite."""
    binary = require_binary("moto_server", "pip install 'moto[server]'")
    port = free_port()
    with (tmp_path / "moto.log").open("w") as out:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def sts_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """boto3's STS client at ``url``, with test credentials of its own."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def decode_iam(body: dict[str, Any]) -> tuple[str, dict[str, list[str]], str]:
    url = base64.b64decode(body["iam_request_url"]).decode()
    headers = json.loads(base64.b64decode(body["iam_request_headers"]))
    return url, headers, base64.b64decode(body["iam_request_body"]).decode()


def test_aws_iam_login_signs_get_caller_identity(openbao: OpenBao, moto_sts: str, monkeypatch) -> None:
    # Static keys: signed with them for the configured region.
    (method, path, body), _ = login_attempt(
        openbao,
        auth_type="aws_iam",
        key_id="AKIDEXAMPLE",
        secret_id="aws-s3cr3t",
        role_id="vault-role",
        region="eu-west-1",
    )
    assert (method, path, body["role"], body["iam_http_request_method"]) == (
        "POST",
        "/v1/auth/aws/login",
        "vault-role",
        "POST",
    )
    url, headers, payload = decode_iam(body)
    assert url == "https://sts.amazonaws.com/" and payload == "Action=GetCallerIdentity&Version=2011-06-15"
    assert "Credential=AKIDEXAMPLE/" in headers["Authorization"][0]
    assert "/eu-west-1/sts/aws4_request" in headers["Authorization"][0]
    assert_no_secret(json.dumps(headers))

    # assume_role_kwargs: temporary credentials from STS (a real moto server) sign the request.
    sts_at(monkeypatch, moto_sts)
    (_, _, body), _ = login_attempt(
        openbao,
        auth_type="aws_iam",
        role_id="vault-role",
        assume_role_kwargs={"RoleArn": "arn:aws:iam::123456789012:role/vault", "RoleSessionName": "credpath"},
    )
    _, headers, _ = decode_iam(body)
    credential = headers["Authorization"][0].split("Credential=")[1].split("/")[0]
    assert credential.startswith("ASIA") and credential != "testing"  # a temporary key from AssumeRole
    assert headers["X-Amz-Security-Token"][0]


@pytest.mark.parametrize("session_token", [None, "session-token-s3cr3t"], ids=["static", "temporary"])
def test_sigv4_signing_is_byte_for_byte_hvacs(monkeypatch, session_token: str | None) -> None:
    # credpath signs the aws_iam login request itself (no hvac at run time); hvac's signer is the reference.
    from datetime import UTC, datetime

    from hvac import aws_utils

    now = datetime(2026, 12, 1, 12, 34, 56, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def utcnow(cls) -> datetime:  # type: ignore[override]
            return now.replace(tzinfo=None)

    monkeypatch.setattr(aws_utils, "datetime", Frozen)
    request = aws_utils.generate_sigv4_auth_request()
    aws_utils.SigV4Auth("AKIDEXAMPLE", "aws-s3cr3t", session_token, "eu-west-1").add_auth(request)
    ours = vault_auth.sigv4_sts_request("AKIDEXAMPLE", "aws-s3cr3t", session_token, "eu-west-1", now)
    assert list(ours.items()) == list(request.headers.items())  # same headers, values and order
    assert (request.url, request.body) == (vault_auth.STS_URL, vault_auth.STS_BODY)


def test_an_aws_iam_login_body_imports_no_hvac() -> None:
    code = (
        "import sys\n"
        "from credpath.backends.vault import ClientSettings\n"
        "from credpath.backends.vault.auth import login_request\n"
        "s = ClientSettings(url='http://127.0.0.1:1', auth_type='aws_iam', key_id='AKID', secret_id='k')\n"
        "path, body = login_request(s)\n"
        "print(path, sorted(body), 'hvac' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [
        "auth/aws/login",
        "['iam_http_request_method',",
        "'iam_request_body',",
        "'iam_request_headers',",
        "'iam_request_url']",
        "False",
    ]


def test_a_jwt_signing_key_that_is_not_rsa_is_a_config_error() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ConfigError, match="RSA key"):
        sign_jwt_rs256({"sub": "svc"}, pem)


def test_azure_client_secret_login_without_a_tenant_is_a_config_error() -> None:
    from credpath.backends.vault.settings import ClientSettings

    settings = ClientSettings(
        url="http://127.0.0.1:1", auth_type="azure", key_id="client", secret_id="pw-s3cr3t"
    )
    with pytest.raises(ConfigError, match="azure_tenant_id"):
        vault_auth.azure_jwt(settings)


@pytest.mark.parametrize("session_token", [None, "session-token-s3cr3t"], ids=["static", "temporary"])
def test_botocore_signs_the_same_request_when_it_is_loaded(session_token: str | None) -> None:
    # Where botocore is loaded anyway (credentials from boto3), its own signer is used: same headers,
    # same signature as the hand-written one (which is hvac's, byte for byte) for the same instant.
    from datetime import UTC, datetime

    theirs = vault_auth.botocore_sigv4_sts_request("AKIDEXAMPLE", "aws-s3cr3t", session_token, "eu-west-1")
    now = datetime.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    ours = vault_auth.sigv4_sts_request("AKIDEXAMPLE", "aws-s3cr3t", session_token, "eu-west-1", now)
    assert theirs == ours
    assert "aws-s3cr3t" not in json.dumps(theirs)  # the session token is sent; the secret key never


def test_an_aws_iam_login_with_botocore_loaded_is_signed_by_botocore(monkeypatch) -> None:
    import botocore.auth

    from credpath.backends.vault.settings import ClientSettings

    signed: list[str] = []
    real = botocore.auth.SigV4Auth.add_auth

    def spy(self: Any, request: Any) -> None:
        signed.append(request.url)
        real(self, request)

    monkeypatch.setattr(botocore.auth.SigV4Auth, "add_auth", spy)
    settings = ClientSettings(url="http://127.0.0.1:1", auth_type="aws_iam", key_id="AKID", secret_id="k")
    _, body = vault_auth.login_request(settings)
    assert signed == [vault_auth.STS_URL]
    assert "Credential=AKID/" in decode_iam(body)[1]["Authorization"][0]


def test_an_aws_iam_login_whose_sts_call_hangs_is_cut_at_the_deadline(openbao: OpenBao, monkeypatch) -> None:
    # AssumeRole is the login's own network I/O: botocore's timeouts and retries would run for minutes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts into the backlog and never answers
    try:
        sts_at(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
        backend = VaultBackend(
            url=openbao.addr,
            auth_type="aws_iam",
            role_id="vault-role",
            timeout=1.5,
            assume_role_kwargs={"RoleArn": "arn:aws:iam::123456789012:role/v", "RoleSessionName": "credpath"},
        )
        began = time.monotonic()
        with pytest.raises(BackendTimeout, match="logging in with auth_type 'aws_iam'"):
            backend.get_variable("v")
        assert time.monotonic() - began < 4
        backend.close()
    finally:
        listener.close()


def test_bad_assume_role_kwargs_are_one_config_line(openbao: OpenBao, moto_sts: str, monkeypatch) -> None:
    sts_at(monkeypatch, moto_sts)
    backend = VaultBackend(
        url=openbao.addr,
        auth_type="aws_iam",
        role_id="vault-role",
        assume_role_kwargs={"RoleArn": "arn:aws:iam::123456789012:role/v", "RoleSessionName": "x"},
    )
    with pytest.raises(ConfigError, match=r"assume_role_kwargs: .*RoleSessionName") as info:
        backend.get_variable("v")
    assert "\n" not in str(info.value)
    backend.close()
