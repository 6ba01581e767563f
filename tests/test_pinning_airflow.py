"""In real Airflow 3.3.2, a connection id with credpath's version suffix (``pg@1``) reads that version through
``credpath.airflow.CredpathBackend``: Airflow passes the id on as it is, since no id it can store holds ``@``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_no_secret
from tests.servers.airflow_env import clean_environment

STORE = '''
from credpath.protocol import BaseBackend, PinnedReads, pinned_version

VERSIONS = {"pg": ["postgres://app:pw-1-s3cr3t@db1.example/app", "postgres://app:pw-2-s3cr3t@db2.example/app"]}


class Versioned(PinnedReads, BaseBackend):
    """A store that keeps versions 1 and 2 of "pg"."""

    alias = "versioned-probe"
    capabilities = frozenset({"versions"})
    version_form = "a number"

    def accepts_version(self, version):
        return version.isdigit() and int(version) > 0

    def get_conn_value(self, conn_id):
        versions = VERSIONS.get(conn_id) or []
        pin = pinned_version()
        if pin is None:
            return versions[-1] if versions else None
        return versions[int(pin) - 1] if int(pin) <= len(versions) else None

    def get_variable(self, key):
        return None
'''

PROBE = """
import json
from airflow.sdk import BaseHook
from airflow.exceptions import AirflowNotFoundException

out = {}
for conn_id in ("pg@1", "pg@2", "pg", "pg@9"):
    try:
        conn = BaseHook.get_connection(conn_id)
        out[conn_id] = [conn.conn_id, conn.host, conn.password == f"pw-{conn.host[2]}-s3cr3t"]
    except AirflowNotFoundException:
        out[conn_id] = "not found"
print(json.dumps(out))
"""


@pytest.mark.airflow
def test_airflow_reads_a_pinned_version_through_the_id_suffix(airflow_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "pinstore.py").write_text(STORE)
    env = clean_environment(tmp_path / "home", airflow_venv)
    env.update(
        {
            "PYTHONPATH": str(tmp_path),
            "CREDPATH_HOME": str(tmp_path / "credpath"),
            "AIRFLOW__SECRETS__BACKEND": "credpath.airflow.CredpathBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {"backends": [{"name": "v", "type": "pinstore.Versioned"}]}
            ),
        }
    )
    result = subprocess.run(
        [str(airflow_venv / "bin" / "python"), "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert_no_secret(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "pg@1": ["pg@1", "db1.example", True],
        "pg@2": ["pg@2", "db2.example", True],
        "pg": ["pg", "db2.example", True],
        "pg@9": "not found",
    }
