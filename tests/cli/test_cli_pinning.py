"""``credpath connections get ID --version V`` / ``ID@V`` and ``variables get KEY --version V`` against moto
Secrets Manager (behind a store without versions, which a pinned read never asks)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath.api import set_default_search_path
from credpath.cli import cli
from tests.conftest import assert_no_secret
from tests.servers.moto import REGION


def _uri(n: int) -> str:
    return f"postgres://app:pw-{n}-s3cr3t@db{n}.example:5432/app"


def _configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, more: str = "") -> None:
    """A store without versions first (it holds "pg" too), then ``more``."""
    config = tmp_path / "credpath.toml"
    config.write_text(
        '[[backends]]\nname = "plain"\ntype = "tests.memory_backend.MemoryBackend"\n'
        f'kwargs = {{ connections = {{ pg = "{_uri(9)}" }} }}\n\n{more}'
    )
    monkeypatch.setenv("CREDPATH_CONFIG", str(config))
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_secrets_manager_harness: Any) -> Any:
    h = aws_secrets_manager_harness
    versions = []
    for n, value in enumerate([_uri(1), _uri(2)]):
        token = str(uuid.uuid4())
        if n == 0:
            h.client.create_secret(
                Name=h.secret_id("connection", "pg"), SecretString=value, ClientRequestToken=token
            )
        else:
            h.client.put_secret_value(
                SecretId=h.secret_id("connection", "pg"), SecretString=value, ClientRequestToken=token
            )
        versions.append(token)
    h.seed("variable", "greeting", "hello-1")
    h.seed("variable", "greeting", "hello-2")
    sm = (
        '[[backends]]\nname = "sm"\ntype = "aws-secrets-manager"\n'
        f'kwargs = {{ endpoint_url = "{h.server.url}", region_name = "{REGION}" }}\n'
    )
    _configure(tmp_path, monkeypatch, sm)
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert_no_secret(result.stdout)
        assert_no_secret(result.stderr)
        return result

    return run, versions


def test_get_a_connection_by_version_and_by_suffix(setup: Any) -> None:
    run, (v1, v2) = setup
    result = run("connections", "get", "pg", "--version", v1, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["host"] == "db1.example" and record["source"] == "sm"
    result = run("connections", "get", f"pg@{v2}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["host"] == "db2.example"
    result = run("connections", "get", "pg", "--version", "AWSPREVIOUS", "--json")
    assert json.loads(result.stdout)["host"] == "db1.example"
    result = run("connections", "get", "pg", "--json")  # the plain read: the first backend, latest
    assert json.loads(result.stdout)["host"] == "db9.example"


def test_get_a_variable_by_version(setup: Any) -> None:
    run, _ = setup
    result = run("variables", "get", "greeting", "--version", "AWSPREVIOUS")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hello-1"
    assert run("variables", "get", "greeting").stdout.strip() == "hello-2"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("connections", "get", "pg", "--version", ""), "version must be a non-empty string"),
        (("connections", "get", "pg", "--version", "a b"), "no spaces"),
        (("connections", "get", "pg", "--version", "v1"), "no backend that keeps versions takes"),
        (("connections", "get", "pg@"), "needs an id and a version"),
        (("connections", "get", "pg@AWSPREVIOUS", "--version", "AWSCURRENT"), "not both"),
        (("variables", "get", "greeting", "--version", "x" * 300), "at most 256"),
    ],
)
def test_a_bad_version_form_exits_2_in_one_line(setup: Any, args: tuple[str, ...], says: str) -> None:
    run, _ = setup
    result = run(*args)
    assert result.exit_code == 2, (args, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credpath: error: "), lines
    assert says in lines[0], lines


def test_a_version_nobody_has_exits_1_naming_id_and_version(setup: Any) -> None:
    run, _ = setup
    missing = str(uuid.uuid4())
    result = run("connections", "get", "pg", "--version", missing)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'pg'" in lines[0] and missing in lines[0], lines


def test_a_path_without_versions_exits_2_naming_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(tmp_path, monkeypatch)
    result = CliRunner().invoke(cli, ["connections", "get", "pg", "--version", "3"], catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'plain'" in lines[0] and "keeps versions" in lines[0], lines
    assert_no_secret(result.output)


def test_a_default_stands_in_for_a_key_not_for_a_version(setup: Any) -> None:
    run, _ = setup
    missing = str(uuid.uuid4())
    result = run("variables", "get", "greeting", "--version", missing, "--default", "d")
    assert result.exit_code == 1
    assert missing in result.stderr and "'greeting'" in result.stderr
    assert run("variables", "get", "nokey", "--default", "d").stdout.strip() == "d"
