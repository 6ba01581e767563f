"""credpath's masker against Airflow 3.3.2's on the same lines and values (the Airflow tier).

Airflow 3.3.2 is the reference where it has the feature: the password's URL-quoted default form
(``quote(password)``, which ``airflow.models.Connection`` registers) and the redaction of nested sensitive
keys in a structure (what its API does to a variable's JSON). Where credpath goes further it is asserted
as a difference: the ``quote(password, safe="")`` form (Airflow leaves it), non-string values under a
sensitive key (Airflow's open apache/airflow#71275), and content patterns, which Airflow 3.3.2 does not
have (``SecretsMasker.enable_content_pattern_masking`` is absent there; its patterns come from Airflow's
main branch, so they are compared with credpath's only by name and expression, not by running them).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from credpath._masking import KNOWN_SECRET_PATTERNS, Masker

pytestmark = pytest.mark.airflow

PASSWORD = "pass/word!"
LINES = [
    "dsn=postgres://app:pass/word%21@db:5432/x",  # quote(password): both mask it
    "plain pass/word! here",  # the password itself: both
    "nothing to hide on this line",
    "two: pass/word! and pass/word%21 end",
    "safe-less pass%2Fword%21 form",  # quote(password, safe=""): credpath only
]
STRUCTURES: list[tuple[Any, str | None]] = [
    ({"password": "pw-1", "db": {"api_key": "k-2", "port": 5432}, "zone": "eu"}, "app_settings"),
    ({"auth": [{"token": "t-3"}, "x"], "Secret-Name": "s-4", "host": "h"}, None),
    ("a string value", "db_password"),
    ({"password": 12345, "pins": {"secret": [1, 2]}, "flag": True}, "app_settings"),  # #71275
]

_AIRFLOW_SIDE = """
import json, sys
from airflow.models.connection import Connection
from airflow._shared.secrets_masker import _secrets_masker, redact
masker = _secrets_masker()
Connection(conn_id="x", conn_type="postgres", password=sys.argv[1])
lines, structures = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({
    "lines": [redact(line) for line in lines],
    "structures": [redact(value, name) for value, name in structures],
    "content_patterns": hasattr(type(masker), "enable_content_pattern_masking"),
}))
"""


def _airflow(venv: Path, home: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CREDPATH_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    args = [PASSWORD, json.dumps(LINES), json.dumps(STRUCTURES)]
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _AIRFLOW_SIDE, *args],
        env=env, capture_output=True, text=True, timeout=180, cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _credpath() -> tuple[list[str], list[Any]]:
    masker = Masker()
    masker.add(PASSWORD)  # the search path registers a connection's password (and its quoted forms)
    lines = [masker.redact(line) for line in LINES]
    structures = [
        masker.redact_text_value(value, name) if isinstance(value, str) else masker.redact_value(value, name)
        for value, name in STRUCTURES
    ]
    return lines, structures


def test_masker_matches_airflow_on_the_shared_part_and_goes_further_where_said(
    airflow_venv: Path, tmp_path: Path
) -> None:
    theirs = _airflow(airflow_venv, tmp_path)
    lines, structures = _credpath()
    # Lines: the same output wherever Airflow masks; credpath also masks the safe="" form.
    assert lines[:4] == theirs["lines"][:4]
    assert theirs["lines"][4] == LINES[4] and lines[4] == "safe-less *** form"
    # Structures: identical except the non-string values under a sensitive key.
    assert structures[:3] == theirs["structures"][:3]
    assert theirs["structures"][3] == {"password": 12345, "pins": {"secret": [1, 2]}, "flag": True}
    assert structures[3] == {"password": "***", "pins": {"secret": ["***", "***"]}, "flag": True}
    # Content patterns: not in Airflow 3.3.2 (compared by definition below).
    assert theirs["content_patterns"] is False


def test_content_patterns_are_airflows_by_name_and_expression():
    # Airflow's main-branch KNOWN_SECRET_PATTERNS (secrets_masker.py), the set [core]
    # mask_secrets_content_patterns turns on: the same seven names.
    assert set(KNOWN_SECRET_PATTERNS) == {
        "aws_access_key",
        "github_token",
        "slack_token",
        "google_api_key",
        "stripe_live_key",
        "pem_private_key_block",
        "jwt",
    }
    assert KNOWN_SECRET_PATTERNS["aws_access_key"] == r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"
