"""A search path of real backends with deliberate collisions, for the web and metrics tests.

Order: env, vault (OpenBao, through a counting fault proxy), aws (moto Secrets Manager, through another),
metastore (SQLite file). Collisions: ``shared_db`` is in all four (env serves it), ``vault_only`` is also in
Secrets Manager (vault serves it), ``region`` is in env and vault (env serves it). Every secret value holds
the leak marker ``s3cr3t``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers.faults import FaultProxy

REPO = Path(__file__).resolve().parents[2]

SECRETS = {
    "env_pw": "env-pw-s3cr3t-1",
    "vault_shared_pw": "vault-shared-s3cr3t-2",
    "vault_only_pw": "vault-only-s3cr3t-3",
    "vault_api_token": "vault-token-s3cr3t-4",
    "vault_var": "vault-apikey-s3cr3t-5",
    "aws_pw": "aws-pw-s3cr3t-6",
    "aws_shadowed_pw": "aws-shadow-s3cr3t-7",
    "aws_var": "aws-secret-var-s3cr3t-8",
    "meta_pw": "meta-pw-s3cr3t-9",
    "meta_shared_pw": "meta-shared-s3cr3t-10",
}

# id -> (kind, backends that hold it, the one that serves it)
EXPECTED = {
    ("connection", "shared_db"): (["env", "vault", "aws", "metastore"], "env"),
    ("connection", "vault_only"): (["vault", "aws"], "vault"),
    ("connection", "api"): (["vault"], "vault"),
    ("connection", "aws_only"): (["aws"], "aws"),
    ("connection", "meta_only"): (["metastore"], "metastore"),
    ("variable", "region"): (["env", "vault"], "env"),
    ("variable", "api_key"): (["vault"], "vault"),
    ("variable", "aws_db_password"): (["aws"], "aws"),
    ("variable", "meta_var"): (["metastore"], "metastore"),
}


@dataclass
class Stack:
    config: Path
    env: dict[str, str]
    vault_proxy: FaultProxy
    aws_proxy: FaultProxy
    extra: dict[str, Any] = field(default_factory=dict)

    def store_requests(self) -> int:
        return self.vault_proxy.count() + self.aws_proxy.count()


def build(tmp: Path, openbao: Any, moto: Any, fault_proxy: type[FaultProxy], *, down: bool = False) -> Stack:
    """Seed the four stores and write credpath.toml; ``down`` adds a fifth backend nobody answers for."""
    from credpath.backends.metastore import MetastoreBackend, generate_key
    from credpath.model import Connection

    s = SECRETS
    mount = openbao.enable_kv(2)
    openbao.put(
        mount,
        2,
        "connections/shared_db",
        {"conn_uri": f"postgres://vault:{s['vault_shared_pw']}@vault-db:5432/app"},
    )
    openbao.put(
        mount,
        2,
        "connections/vault_only",
        {"conn_uri": f"mysql://vo:{s['vault_only_pw']}@mysql.internal:3306/shop"},
    )
    openbao.put(
        mount,
        2,
        "connections/api",
        {"conn_type": "http", "host": "api.example.com", "login": "svc", "description": "Payments API",
         "extra": {"api_token": s["vault_api_token"], "timeout": 30}},
    )  # fmt: skip
    openbao.put(mount, 2, "variables/region", {"value": "eu-central-1"})
    openbao.put(mount, 2, "variables/api_key", {"value": s["vault_var"]})

    sm = moto.client("secretsmanager")
    for name, value in {
        "airflow/connections/aws_only": f"redshift://rs:{s['aws_pw']}@cluster.redshift:5439/dw",
        "airflow/connections/vault_only": f"mysql://shadow:{s['aws_shadowed_pw']}@old-mysql:3306/shop",
        "airflow/connections/shared_db": f"postgres://aws:{s['aws_shadowed_pw']}@aws-db:5432/app",
        "airflow/variables/aws_db_password": s["aws_var"],
    }.items():
        sm.create_secret(Name=name, SecretString=value)

    fernet = generate_key()
    db = tmp / "metastore.db"
    meta = MetastoreBackend(url=f"sqlite:///{db}", fernet_key=fernet)
    meta.set_connection(
        Connection(conn_id="meta_only", conn_type="postgres", host="meta-db", port=5432, schema="ops",
                   login="ops", password=s["meta_pw"], description="Ops database")
    )  # fmt: skip
    meta.set_connection(
        Connection(
            conn_id="shared_db", conn_type="postgres", host="meta-db", login="m", password=s["meta_shared_pw"]
        )
    )
    meta.set_variable("meta_var", "blue")
    meta.close()

    vault_port = int(openbao.addr.rsplit(":", 1)[1])
    vault_proxy = fault_proxy("127.0.0.1", vault_port)
    aws_proxy = fault_proxy("127.0.0.1", moto.port)
    config = tmp / "credpath.toml"
    text = f"""
[[backends]]
name = "env"
type = "env"

[[backends]]
name = "vault"
type = "vault"
kwargs = {{ url = "{vault_proxy.url}", token = "{openbao.root_token}", mount_point = "{mount}", \
kv_engine_version = 2 }}

[[backends]]
name = "aws"
type = "aws-secrets-manager"
kwargs = {{ endpoint_url = "{aws_proxy.url}", region_name = "us-east-1" }}

[[backends]]
name = "metastore"
type = "metastore"
kwargs = {{ url = "sqlite:///{db}", fernet_key = "{fernet}" }}
"""
    if down:
        from tests.servers._util import free_port

        text += f"""
[[backends]]
name = "down"
type = "vault"
kwargs = {{ url = "http://127.0.0.1:{free_port()}", token = "t", mount_point = "secret", \
kv_engine_version = 2, timeout = 2 }}
"""
    config.write_text(text)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CREDPATH_", "AIRFLOW_", "VAULT_", "BAO_", "AWS_PROFILE", "PYTHONPATH"))
    }
    env.update(
        PYTHONPATH=str(REPO / "src") + os.pathsep + str(REPO),
        CREDPATH_HOME=str(tmp / "home"),
        AIRFLOW_CONN_SHARED_DB=f"postgres://envuser:{s['env_pw']}@env-db.internal:5432/app",
        AIRFLOW_VAR_REGION="us-west-2",
    )
    return Stack(config=config, env=env, vault_proxy=vault_proxy, aws_proxy=aws_proxy, extra={"mount": mount})


def web_command(stack: Stack, port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "credpath",
        "web",
        "--config",
        str(stack.config),
        "--port",
        str(port),
        *args,
    ]
