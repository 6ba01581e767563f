"""One behavioural contract for every store, run against each store's harness fixture.

The suite itself ships in the package (:mod:`credpath.testing`, so a third-party backend runs the same
behaviours); here it runs over the matrix built from the registry: every alias in ``registry.ALIASES``,
whose harness is the fixture ``<alias>_harness`` (a plugin in tests/servers/). A store without a harness
fails the suite. Exempt, with the reason:

- ``airflow-db``: a read-only window on a real Airflow metadata database (Airflow's schema, written by
  Airflow); it cannot be seeded or written by credpath and needs an Airflow install, so
  tests/backends/test_airflow_db.py tests it against Airflow itself.
- ``aws-sts``: a lease source with no storage (STS mints keys; nothing can be seeded or read back);
  tests/backends/test_aws_sts.py tests it against moto's STS.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from credpath import registry
from credpath.testing import BackendContract, harness_fixture

#: Aliases the registry knows but the contract does not run, with the reason (see the module docstring).
EXEMPT: dict[str, str] = {
    "airflow-db": "read-only view of Airflow's own metadata database; tested against Airflow itself",
    "aws-sts": "mints temporary keys, stores nothing to seed; tested against moto in test_aws_sts.py",
}


def contract_aliases() -> list[str]:
    return [alias for alias in registry.ALIASES if alias not in EXEMPT]


harness = harness_fixture(contract_aliases())


class TestContract(BackendContract):
    """Every contract behaviour, for every store of the registry."""


def test_the_matrix_covers_every_registered_store() -> None:
    assert set(contract_aliases()) | set(EXEMPT) == set(registry.ALIASES)
    assert set(EXEMPT) <= set(registry.ALIASES), "an exemption names a store the registry no longer has"


# --- the suite as a third party runs it ---------------------------------------------------------------------

_DICT_STORE = '''
"""A third-party backend: a dict per kind, shared by name so a harness can seed it natively."""

from credpath.errors import ConfigError
from credpath.protocol import BaseBackend

STORES = {}


class DictBackend(BaseBackend):
    alias = "dict-store"
    store_name = "Dict Store"
    capabilities = frozenset({"write", "list"})

    def __init__(self, store="default", **options):
        super().__init__(**options)
        self.data = STORES.setdefault(store, {"connection": {}, "variable": {}, "config": {}})

    def _get(self, kind, key):
        return self.data[kind].get(key) if self.wants(kind, key) else None

    def get_conn_value(self, conn_id):
        return self._get("connection", conn_id)

    def get_variable(self, key):
        return self._get("variable", key)

    def get_config(self, key):
        return self._get("config", key)

    def _set(self, kind, key, value, overwrite):
        if not overwrite and key in self.data[kind]:
            raise ConfigError(f"{self.label}: {kind} {key!r} exists")
        self.data[kind][key] = value

    def set_connection(self, conn, *, overwrite=True, serialization="json"):
        self._set("connection", conn.conn_id, self.serialize_connection(conn, serialization), overwrite)

    def set_variable(self, key, value, *, overwrite=True):
        self._set("variable", key, value, overwrite)

    def delete_connection(self, conn_id):
        return self.data["connection"].pop(conn_id, None) is not None

    def delete_variable(self, key):
        return self.data["variable"].pop(key, None) is not None

    def list_connections(self):
        return sorted(self.data["connection"])

    def list_variables(self):
        return sorted(self.data["variable"])


class FastDictBackend(DictBackend):
    requires = ("dict_store_speedups",)
    extra = "fast"
    distribution = "dict-store"
'''


def _install_dist(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed the way pip leaves it: the module and a dist-info with an entry point."""
    (root / "dict_store.py").write_text(_DICT_STORE)
    dist = root / "dict_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dict-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[credpath.backends]\ndict-store = dict_store:DictBackend\nfast-dict = dict_store.FastDictBackend\n"
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "dict_store", raising=False)


def test_an_installed_package_registers_an_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(registry.ConfigError, match="unknown backend type 'dict-store'"):
        registry.resolve_type("dict-store")
    _install_dist(tmp_path, monkeypatch)
    assert registry.resolve_type("dict-store") == ("dict-store", "dict_store.DictBackend")
    backend = registry.create_backend("dict-store", {"store": "x"}, name="team-store")
    assert type(backend).__name__ == "DictBackend" and backend.name == "team-store"
    with pytest.raises(registry.ConfigError, match="unknown kwarg"):
        registry.create_backend("dict-store", {"nope": 1})
    # A missing client of a third-party backend names that package's extra, not credpath's.
    with pytest.raises(registry.ConfigError) as info:
        registry.create_backend("fast-dict", name="fd")
    assert str(info.value) == "backend 'fd' needs dict_store_speedups: pip install 'dict-store[fast]'"
    # Built-in aliases win: a package cannot take over 'vault'.
    assert registry.resolve_type("vault")[1] == registry.ALIASES["vault"]


def test_a_third_party_backend_runs_the_contract_in_a_few_lines(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_dist(site, monkeypatch)
    pytester.makepyfile(
        test_dict_store=textwrap.dedent(
            """
            import itertools

            import pytest

            from credpath.registry import create_backend
            from credpath.testing import BackendContract

            stores = itertools.count()


            class Harness:
                def __init__(self):
                    self.store = f"s{next(stores)}"

                def make_backend(self, **kwargs):
                    return create_backend("dict-store", {"store": self.store, **kwargs})

                def seed(self, kind, key, raw_value):
                    self.make_backend().data[kind][key] = raw_value


            class TestDictStore(BackendContract):
                @pytest.fixture
                def harness(self):
                    return Harness()
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    outcomes = result.parseoutcomes()
    # Everything but the batch, prefetch, two versions and four rotation tests (version check, change
    # events, rotation dates, a capability off until its setting): the store declares none of them.
    assert outcomes.get("passed") == len([n for n in dir(BackendContract) if n.startswith("test_")]) - 8
    assert outcomes.get("skipped") == 8
    assert "failed" not in outcomes and "errors" not in outcomes
    result.stdout.no_fnmatch_line("*FAILED*")


def test_a_store_without_a_harness_fails_instead_of_skipping(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_matrix="""
        from credpath.testing import BackendContract, harness_fixture

        harness = harness_fixture(["no-such-store"])


        class TestMatrix(BackendContract):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    outcomes = result.parseoutcomes()
    assert result.ret != 0
    assert "skipped" not in outcomes and "passed" not in outcomes
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == len(
        [n for n in dir(BackendContract) if n.startswith("test_")]
    )
    result.stdout.fnmatch_lines(["*'no-such-store' has no contract harness*no_such_store_harness*"])


def test_importing_credpath_does_not_import_pytest_or_the_suite() -> None:
    import subprocess

    code = "import sys, credpath; print('pytest' in sys.modules, 'credpath.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- declared capabilities ----------------------------------------------------------------------------------


def test_declaring_a_capability_without_its_methods_fails_at_class_definition() -> None:
    from credpath.protocol import BaseBackend

    with pytest.raises(TypeError) as info:

        class Lister(BaseBackend):  # declares listing, lists nothing
            capabilities = frozenset({"list", "write"})

            def get_conn_value(self, conn_id):
                return None

            def get_variable(self, key):
                return None

            def list_connections(self):
                return []

    message = str(info.value)
    assert "Lister declares capabilities list, write" in message
    assert "list_variables" in message and "set_connection" in message and "delete_variable" in message
    assert "list_connections" not in message  # it is there


def test_structured_batch_needs_get_connections_and_unknown_capabilities_are_refused() -> None:
    from credpath.protocol import BaseBackend

    with pytest.raises(TypeError, match="does not implement get_connection, get_connections"):

        class Rows(BaseBackend):
            capabilities = frozenset({"batch", "structured"})

            def get_conn_values(self, ids):
                return {}

            def get_variables(self, keys):
                return {}

    with pytest.raises(TypeError, match="unknown capability 'writes'; known: write, list"):

        class Typo(BaseBackend):
            capabilities = frozenset({"writes"})


def test_every_registered_backend_declares_what_it_implements() -> None:
    from credpath.protocol import check_capabilities, required_methods

    for alias in registry.ALIASES:
        cls = registry.load_class(registry.ALIASES[alias])
        check_capabilities(cls)  # raises if a declared capability's methods are missing
        assert all(callable(getattr(cls, m)) for m in required_methods(cls.capabilities)), alias


def test_supports_reads_the_declaration_and_a_foreign_objects_methods() -> None:
    from credpath.protocol import BaseBackend, supports
    from tests.memory_backend import AirflowStyleBackend, BatchMemoryBackend, MemoryBackend

    class Undeclared(MemoryBackend):  # has every write method, declares nothing
        capabilities = frozenset()

    assert supports(MemoryBackend(), "write") and supports(MemoryBackend(), "list")
    assert not supports(MemoryBackend(), "batch") and supports(BatchMemoryBackend(), "batch")
    assert not supports(Undeclared(), "write")  # declared, not introspected
    assert not supports(AirflowStyleBackend(), "write") and not supports(AirflowStyleBackend(), "list")

    class Foreign:  # not a BaseBackend: its methods are what it supports
        def get_conn_value(self, conn_id):
            return None

        def list_connections(self):
            return []

        def list_variables(self):
            return []

    assert supports(Foreign(), "list") and not supports(Foreign(), "batch")
    assert isinstance(MemoryBackend(), BaseBackend)
