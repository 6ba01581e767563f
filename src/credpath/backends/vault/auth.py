"""Vault auth methods: the table of default mounts, required kwargs and login bodies (no HTTP here).

Why no hvac: the transport (one deadline per call, retries with back-off, bounded streaming reads,
single-flight) is credpath's own (see ``session.py``), so hvac's ``Client`` would only add a second error
model and per-request timeouts. What was left of hvac was ``aws_utils`` (SigV4 signing of one fixed STS
request, 40 lines below) at 15-21 ms of import on top of requests, plus a dependency; signing is checked
against hvac's own signer in the tests (hvac stays a test dependency: it is the tests' admin client).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from credpath.errors import AccessDenied, ConfigError, MissingFile

if TYPE_CHECKING:
    from credpath.backends.vault.settings import ClientSettings

__all__ = [
    "AUTH_METHODS",
    "AUTH_TYPES",
    "DEFAULT_AUTH_MOUNTS",
    "DEFAULT_KUBERNETES_JWT_PATH",
    "STS_BODY",
    "STS_URL",
    "AuthMethod",
    "LoginBody",
    "auth_mount",
    "aws_iam_body",
    "azure_jwt",
    "botocore_sigv4_sts_request",
    "gcp_jwt",
    "login_request",
    "read_file",
    "sign_jwt_rs256",
    "sigv4_sts_request",
    "static_token",
]

DEFAULT_KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def read_file(path: str, setting: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except FileNotFoundError:
        # Also a FileNotFoundError: Airflow raises that here, and callers may catch it.
        raise MissingFile(f"{setting}: file {path!r} does not exist", filename=path) from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read file {path!r} ({type(exc).__name__})") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt_rs256(claims: dict[str, Any], private_key_pem: str, kid: str | None = None) -> str:
    """A compact RS256 JWT signed with ``cryptography`` (no PyJWT dependency)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("jwt auth: the private key must be an RSA key (RS256)")
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


# --- aws_iam: a signed sts:GetCallerIdentity that Vault replays to AWS ------------------------------------

STS_URL = "https://sts.amazonaws.com/"
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def sigv4_sts_request(
    access_key: str, secret_key: str, session_token: str | None, region: str, now: datetime | None = None
) -> dict[str, str]:
    """The headers of a SigV4-signed ``POST sts.amazonaws.com`` GetCallerIdentity, as hvac's ``aws_utils``
    builds them (same headers, order and canonical form, so Vault sees what Airflow's provider sends)."""
    timestamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Host": "sts.amazonaws.com",
        "Content-Length": str(len(STS_BODY)),
        "X-Amz-Date": timestamp,
    }
    if session_token:
        headers["X-Amz-Security-Token"] = session_token
    names = sorted(headers)
    canonical_headers = "".join(f"{k.lower()}:{headers[k]}\n" for k in names)
    signed_headers = ";".join(k.lower() for k in names)
    payload_hash = hashlib.sha256(STS_BODY.encode()).hexdigest()
    canonical_request = "\n".join(["POST", "/", "", canonical_headers, signed_headers, payload_hash])
    scope = f"{timestamp[:8]}/{region}/sts/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (timestamp[:8], region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return headers


def _aws_credentials(s: ClientSettings) -> tuple[str, str, str | None]:
    if s.key_id and s.secret_id:
        return s.key_id, s.secret_id, None
    import boto3

    if s.assume_role_kwargs:
        from botocore.exceptions import ClientError, ParamValidationError

        try:
            creds = boto3.client("sts").assume_role(**s.assume_role_kwargs)["Credentials"]
        except ParamValidationError as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"assume_role_kwargs: {reason}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise AccessDenied(f"auth_type 'aws_iam': STS AssumeRole was refused ({code})") from None
        return creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
    found = boto3.Session().get_credentials()
    if found is None:
        raise ConfigError("auth_type 'aws_iam': no AWS credentials found (key_id/secret_id or boto3)")
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def _drops_canonical_request(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("CanonicalRequest")


def _quiet_canonical_requests() -> None:
    """botocore logs each canonical request at DEBUG, session token included: drop that one record."""
    logger = logging.getLogger("botocore.auth")
    if _drops_canonical_request not in logger.filters:
        logger.addFilter(_drops_canonical_request)


def botocore_sigv4_sts_request(
    access_key: str, secret_key: str, session_token: str | None, region: str
) -> dict[str, str]:
    """The same signed GetCallerIdentity headers, made by botocore's own SigV4 signer (used whenever
    botocore is loaded anyway, so the hand-written signer serves only static keys without it)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    _quiet_canonical_requests()
    request = AWSRequest(
        method="POST",
        url=STS_URL,
        data=STS_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Host": "sts.amazonaws.com",
            "Content-Length": str(len(STS_BODY)),
        },
    )
    SigV4Auth(Credentials(access_key, secret_key, session_token), "sts", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def aws_iam_body(s: ClientSettings) -> dict[str, Any]:
    access_key, secret_key, session_token = _aws_credentials(s)
    region = s.region or "us-east-1"
    if "botocore" in sys.modules:
        headers = botocore_sigv4_sts_request(access_key, secret_key, session_token, region)
    else:
        headers = sigv4_sts_request(access_key, secret_key, session_token, region)
    body: dict[str, Any] = {
        "iam_http_request_method": "POST",
        "iam_request_url": base64.b64encode(STS_URL.encode()).decode(),
        "iam_request_headers": base64.b64encode(
            json.dumps({k: [v] for k, v in headers.items()}).encode()
        ).decode(),
        "iam_request_body": base64.b64encode(STS_BODY.encode()).decode(),
    }
    if s.role_id:
        body["role"] = s.role_id
    return body


# --- JWTs of gcp and azure --------------------------------------------------------------------------------


def gcp_jwt(s: ClientSettings) -> str:
    if s.gcp_keyfile_dict:
        info = s.gcp_keyfile_dict
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except json.JSONDecodeError:
                raise ConfigError("gcp_keyfile_dict is not valid JSON") from None
    else:
        try:
            info = json.loads(read_file(str(s.gcp_key_path), "gcp_key_path"))
        except json.JSONDecodeError:
            raise ConfigError(f"gcp_key_path: file {s.gcp_key_path!r} is not valid JSON") from None
    if not isinstance(info, dict):
        raise ConfigError("GCP service-account key is not a JSON object")
    missing = [k for k in ("client_email", "private_key") if not info.get(k)]
    if missing:
        raise ConfigError(f"GCP service-account key lacks field(s): {', '.join(missing)}")
    now = int(time.time())
    # Vault's gcp (iam) login: sub = service account, aud = vault/<role>, at most 15 minutes of validity.
    claims = {"sub": info["client_email"], "aud": f"vault/{s.role_id}", "iat": now, "exp": now + 900}
    return sign_jwt_rs256(claims, info["private_key"], info.get("private_key_id"))


def azure_jwt(s: ClientSettings) -> str:
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    if s.key_id and s.secret_id:
        if not s.azure_tenant_id:
            raise ConfigError("auth_type 'azure': azure_tenant_id is required with key_id and secret_id")
        credential: Any = ClientSecretCredential(s.azure_tenant_id, s.key_id, s.secret_id)
    else:
        credential = DefaultAzureCredential()
    resource = (s.azure_resource or "https://management.azure.com/").rstrip("/")
    return str(credential.get_token(f"{resource}/.default").token)


# --- the table ---------------------------------------------------------------------------------------------

LoginBody = Callable[["ClientSettings"], dict[str, Any]]


def _approle_body(s: ClientSettings) -> dict[str, Any]:
    body = {"role_id": s.role_id}
    if s.secret_id:
        body["secret_id"] = s.secret_id
    return body


def _password_body(s: ClientSettings) -> dict[str, Any]:
    return {"password": s.password}


def _cert_body(s: ClientSettings) -> dict[str, Any]:
    # The TLS client certificate (kwarg `cert`) is the credential; role_id optionally names the role.
    return {"name": s.role_id} if s.role_id else {}


def _github_body(s: ClientSettings) -> dict[str, Any]:
    return {"token": s.token}


def _jwt_setting(s: ClientSettings) -> str:
    return s.jwt_token or read_file(str(s.jwt_token_path), "jwt_token_path")


def _kubernetes_jwt(s: ClientSettings) -> str:
    return read_file(s.kubernetes_jwt_path or DEFAULT_KUBERNETES_JWT_PATH, "kubernetes_jwt_path")


def _role_and_jwt(role_setting: str, jwt: Callable[[ClientSettings], str]) -> LoginBody:
    """The login body of the methods that present a role and a JWT (jwt, kubernetes, gcp, azure)."""
    return lambda s: {"role": getattr(s, role_setting), "jwt": jwt(s)}


@dataclass(frozen=True)
class AuthMethod:
    mount: str  # Vault's default mount path of the method
    # Groups of kwargs; each group needs at least one set (checked when the settings are built).
    required: tuple[tuple[str, ...], ...] = ()
    login_body: LoginBody | None = None  # None for 'token', which sends no login request
    user_in_path: bool = False  # the login path ends in /<username>


_USER_AND_PASSWORD = (("username",), ("password",))
# aws/gcp/azure are looked up at login time through lambdas (tests replace auth.azure_jwt).
AUTH_METHODS: dict[str, AuthMethod] = {
    # secret_id is optional, as in Airflow: a role with bind_secret_id=false logs in with role_id alone.
    "approle": AuthMethod("approle", (("role_id",),), _approle_body),
    "aws_iam": AuthMethod("aws", (), lambda s: aws_iam_body(s)),
    "azure": AuthMethod(
        "azure", (("role_id",), ("azure_tenant_id",)), _role_and_jwt("role_id", lambda s: azure_jwt(s))
    ),
    "cert": AuthMethod("cert", (("cert",),), _cert_body),
    "gcp": AuthMethod(
        "gcp",
        (("role_id",), ("gcp_key_path", "gcp_keyfile_dict")),
        _role_and_jwt("role_id", lambda s: gcp_jwt(s)),
    ),
    "github": AuthMethod("github", (("token",),), _github_body),
    "jwt": AuthMethod(
        "jwt", (("jwt_role",), ("jwt_token", "jwt_token_path")), _role_and_jwt("jwt_role", _jwt_setting)
    ),
    "kubernetes": AuthMethod(
        "kubernetes", (("kubernetes_role",),), _role_and_jwt("kubernetes_role", _kubernetes_jwt)
    ),
    "ldap": AuthMethod("ldap", _USER_AND_PASSWORD, _password_body, user_in_path=True),
    "radius": AuthMethod("radius", _USER_AND_PASSWORD, _password_body, user_in_path=True),
    "token": AuthMethod("token"),
    "userpass": AuthMethod("userpass", _USER_AND_PASSWORD, _password_body, user_in_path=True),
}
AUTH_TYPES: tuple[str, ...] = tuple(AUTH_METHODS)
DEFAULT_AUTH_MOUNTS: dict[str, str] = {name: method.mount for name, method in AUTH_METHODS.items()}


def auth_mount(s: ClientSettings) -> str:
    return s.auth_mount_point or AUTH_METHODS[s.auth_type].mount


def login_request(s: ClientSettings) -> tuple[str, dict[str, Any]]:
    """(path, body) of the login request of the auth method; no network I/O except for aws/azure
    (the session runs it within the login's deadline)."""
    method = AUTH_METHODS[s.auth_type]
    if method.login_body is None:  # pragma: no cover - the session handles 'token' without a request
        raise ConfigError(f"auth_type {s.auth_type!r} is not supported")
    path = f"auth/{auth_mount(s)}/login"
    if method.user_in_path:
        path += f"/{quote(str(s.username), safe='')}"
    return path, method.login_body(s)


def static_token(s: ClientSettings) -> str:
    """auth_type 'token': the kwarg, else the token file (re-read at each login), else ``VAULT_TOKEN``."""
    if s.token:
        token = s.token
    elif s.token_path:
        token = read_file(s.token_path, "token_path")
    else:
        token = os.environ.get("VAULT_TOKEN", "")
    if not token:
        raise ConfigError("auth_type 'token' needs token, token_path or the VAULT_TOKEN environment variable")
    return token
