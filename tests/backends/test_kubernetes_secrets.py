"""The Kubernetes Secrets backend, through the unmodified official client, against the loopback fake.

The contract suite runs it too (tests/backends/test_contract.py, alias ``kubernetes-secrets``); here: the
fake itself, naming, labels and listing, batches and prefetch, writes, errors, deadlines, configuration,
and migration metastore -> kubernetes -> metastore.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet

from credpath.backends.kubernetes_secrets import (
    ID_ANNOTATION,
    KIND_LABEL,
    MANAGED_BY_LABEL,
    KubernetesSecretsBackend,
)
from credpath.errors import (
    AccessDenied,
    BackendError,
    BackendTimeout,
    ConfigError,
    MissingDependency,
    NotFound,
)
from credpath.model import Connection
from credpath.registry import create_backend
from tests.servers.kubernetes_fake import KubernetesSecretsFake, KubernetesSecretsHarness

PW = "pw-s3cr3t-k8s"
URI = f"postgres://app:{PW}@db.example.com:5432/analytics"

H = KubernetesSecretsHarness


def _data(fake: KubernetesSecretsFake, ns: str, name: str) -> dict[str, str]:
    secret = fake.secret(ns, name)
    assert secret is not None, name
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


# --- the fake itself ----------------------------------------------------------------------------------------


class TestTheFake:
    """Raw HTTP against the fake: the shapes the reference documents, so the backend tests mean something."""

    @pytest.fixture
    def api(self, kubernetes_fake: KubernetesSecretsFake) -> Any:
        kubernetes_fake.reset()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {kubernetes_fake.token}"
        base = f"{kubernetes_fake.endpoint}/api/v1/namespaces/fake-ns/secrets"

        def call(method: str, path: str = "", **kwargs: Any) -> requests.Response:
            return session.request(method, base + path, timeout=5, **kwargs)

        return call

    @staticmethod
    def secret(name: str, labels: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "labels": labels or {}},
            **fields,
        }

    def test_create_read_replace_delete_with_status_bodies(self, api: Any) -> None:
        created = api("POST", json=self.secret("a", stringData={"k": "v"}, data={"k": "b2xk", "j": "eA=="}))
        assert created.status_code == 201
        body = created.json()
        assert body["data"] == {"k": base64.b64encode(b"v").decode(), "j": "eA=="}  # stringData wins
        assert "stringData" not in body and body["type"] == "Opaque"
        first = int(body["metadata"]["resourceVersion"])
        again = api("POST", json=self.secret("a"))
        assert again.status_code == 409
        assert again.json() | {"metadata": {}} == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'secrets "a" already exists',
            "reason": "AlreadyExists",
            "details": {"name": "a", "kind": "secrets"},
            "code": 409,
        }
        replaced = api("PUT", "/a", json=self.secret("a", data={"n": "eQ=="}))
        assert replaced.status_code == 200 and int(replaced.json()["metadata"]["resourceVersion"]) > first
        assert api("GET", "/a").json()["data"] == {"n": "eQ=="}
        stale = api("PUT", "/a", json=self.secret("a") | {"metadata": {"name": "a", "resourceVersion": "1"}})
        assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
        assert api("PUT", "/absent", json=self.secret("absent")).status_code == 404
        deleted = api("DELETE", "/a")
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "Success" and deleted.json()["details"]["name"] == "a"
        missing = api("GET", "/a")
        assert missing.status_code == 404
        assert (missing.json()["reason"], missing.json()["message"]) == ("NotFound", 'secrets "a" not found')
        assert api("DELETE", "/a").status_code == 404

    def test_validation(self, api: Any) -> None:
        assert api("POST", json=self.secret("Not_A_Name")).json()["reason"] == "Invalid"
        assert api("POST", json=self.secret("ok", data={"k": "%%%"})).status_code == 400
        assert api("POST", json=self.secret("ok", stringData={"bad key": "x"})).status_code == 422
        other_ns = self.secret("ok") | {"metadata": {"name": "ok", "namespace": "elsewhere"}}
        assert api("POST", json=other_ns).status_code == 400

    def test_label_selectors_and_paging(self, api: Any, kubernetes_fake: KubernetesSecretsFake) -> None:
        for i in range(5):
            api(
                "POST",
                json=self.secret(f"s{i}", {"kind": "a" if i % 2 else "b", **({"x": "1"} if i < 2 else {})}),
            )

        def names(selector: str, **params: Any) -> list[str]:
            answer = api("GET", params={"labelSelector": selector, **params}).json()
            assert answer["kind"] == "SecretList" and "kind" not in (answer["items"] or [{}])[0]
            return [item["metadata"]["name"] for item in answer["items"]]

        assert names("kind=a") == ["s1", "s3"]
        assert names("kind==b") == ["s0", "s2", "s4"]
        assert names("kind!=a") == ["s0", "s2", "s4"]
        assert names("x") == ["s0", "s1"]
        assert names("!x,kind=b") == ["s2", "s4"]
        assert names("kind in (a, b),x") == ["s0", "s1"]
        assert names("kind notin (a)") == ["s0", "s2", "s4"]
        assert api("GET", params={"labelSelector": "a=b=c"}).status_code == 400
        pages, token = [], None
        while True:
            answer = api("GET", params={"limit": 2, **({"continue": token} if token else {})}).json()
            pages.append([item["metadata"]["name"] for item in answer["items"]])
            token = answer["metadata"].get("continue")
            if not token:
                break
            assert answer["metadata"]["remainingItemCount"] > 0
        assert pages == [["s0", "s1"], ["s2", "s3"], ["s4"]]
        assert api("GET", params={"continue": "garbage"}).status_code == 400

    def test_token_deny_and_faults(self, api: Any, kubernetes_fake: KubernetesSecretsFake) -> None:
        anonymous = requests.get(f"{kubernetes_fake.endpoint}/api/v1/namespaces/fake-ns/secrets", timeout=5)
        assert (anonymous.status_code, anonymous.json()["reason"]) == (401, "Unauthorized")
        api("POST", json=self.secret("a"))
        kubernetes_fake.deny("fake-ns", "a", "get")
        denied = api("GET", "/a")
        assert denied.status_code == 403 and 'secrets "a" is forbidden' in denied.json()["message"]
        assert api("DELETE", "/a").status_code == 200  # only 'get' was denied
        kubernetes_fake.fail_next(429, retry_after=2)
        throttled = api("GET", "/a")
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")


# --- naming, labels, listing ---------------------------------------------------------------------------


@pytest.fixture
def h(kubernetes_secrets_harness: KubernetesSecretsHarness) -> KubernetesSecretsHarness:
    return kubernetes_secrets_harness


def test_ids_map_to_dns_names_and_invalid_ones_are_misses_without_a_call(h: H) -> None:
    h.seed_secret("airflow-connections-my-db", {"conn_uri": URI})
    backend = h.make_backend()
    assert backend.get_conn_value("my_db") == URI
    assert backend.get_conn_value("MY_DB") == URI and backend.get_conn_value("my-db") == URI
    before = h.api_calls()
    for bad in ("a/b", "trailing_", "x" * 300, "sp ace"):
        assert backend.get_conn_value(bad) is None
    assert h.api_calls() == before
    with pytest.raises(ConfigError) as info:
        backend.set_variable("a/b", "value-s3cr3t")
    assert "'a/b'" in str(info.value) and "s3cr3t" not in str(info.value)
    assert "kubernetes-secrets" in str(info.value)


def test_writes_label_and_annotate_and_listing_gives_the_original_ids(h: H) -> None:
    backend = h.make_backend()
    backend.set_connection(Connection(conn_id="My_Db", conn_type="postgres", host="h", password=PW))
    backend.set_variable("batch_size", "500")
    stored = h.fake.secret(h.namespace, "airflow-connections-my-db")
    assert stored["metadata"]["labels"] == {MANAGED_BY_LABEL: "credpath", KIND_LABEL: "connection"}
    assert stored["metadata"]["annotations"] == {ID_ANNOTATION: "My_Db"}
    assert _data(h.fake, h.namespace, "airflow-variables-batch-size") == {"value": "500"}
    h.seed("connection", "plainlabelled", "http://x")  # labelled, no annotation: the name's own spelling
    h.seed("connection", "unlabelled", "http://y", labelled=False)  # readable, not listed
    h.seed_secret("other-prefix-z", {"conn_uri": "http://z"}, {KIND_LABEL: "connection"})
    assert backend.list_connections() == ["My_Db", "plainlabelled"]
    assert backend.list_variables() == ["batch_size"]
    assert backend.get_conn_value("unlabelled") == "http://y"


def test_listing_pages_with_limit_and_continue(h: H) -> None:
    for i in range(7):
        h.seed("variable", f"v{i}", str(i))
    h.fake.requests.clear()
    backend = h.make_backend(page_size=3)
    assert backend.list_variables() == [f"v{i}" for i in range(7)]
    assert h.fake.count("GET") == 3  # 3 + 3 + 1
    h.fake.max_page = 2  # a server may cut pages shorter than asked
    assert len(h.make_backend().list_variables()) == 7


def test_null_and_empty_prefixes(h: H) -> None:
    h.seed_secret("bare", {"value": "b"}, {KIND_LABEL: "variable"})
    backend = h.make_backend(variables_prefix="", connections_prefix=None)
    assert backend.get_variable("bare") == "b"
    assert backend.list_variables() == ["bare"]
    before = h.api_calls()
    assert backend.get_conn_value("anything") is None and backend.list_connections() == []
    assert h.api_calls() == before
    with pytest.raises(ConfigError, match="connections_prefix is null"):
        backend.set_connection(Connection(conn_id="c", conn_type="http"))


def test_json_fields_and_uri_forms(h: H) -> None:
    backend = h.make_backend()
    conn = Connection(
        conn_id="api",
        conn_type="http",
        host="api.example",
        login="svc",
        schema="v1",
        port=8443,
        password=PW,
        extra='{"v": 1}',
    )
    backend.set_connection(conn, serialization="json")
    data = _data(h.fake, h.namespace, "airflow-connections-api")
    assert data == {
        "conn_type": "http",
        "host": "api.example",
        "login": "svc",
        "schema": "v1",
        "password": PW,
        "port": "8443",
        "extra": '{"v": 1}',
    }
    assert backend.get_connection("api").to_dict() == conn.to_dict()
    backend.set_connection(conn.with_id("api"), serialization="uri")  # replace drops the old keys
    assert set(_data(h.fake, h.namespace, "airflow-connections-api")) == {"conn_uri"}
    assert backend.get_connection("api").to_dict() == conn.to_dict()
    with pytest.raises(ConfigError, match="serialization"):
        backend.set_connection(conn, serialization="yaml")


def test_a_variable_without_value_is_an_error_naming_keys_not_values(h: H) -> None:
    h.seed_secret("airflow-variables-odd", {"password": PW, "other": "x"})
    with pytest.raises(BackendError) as info:
        h.make_backend().get_variable("odd")
    message = str(info.value)
    assert "'airflow-variables-odd'" in message and "other, password" in message and PW not in message


def test_overwrite_semantics(h: H) -> None:
    backend = h.make_backend()
    backend.set_variable("k", "v1")
    rv = h.fake.secret(h.namespace, "airflow-variables-k")["metadata"]["resourceVersion"]
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_variable("k", "value-s3cr3t", overwrite=False)
    backend.set_variable("k", "v2")
    assert backend.get_variable("k") == "v2"
    assert h.fake.secret(h.namespace, "airflow-variables-k")["metadata"]["resourceVersion"] != rv
    assert backend.delete_variable("k") is True and backend.delete_variable("k") is False


def test_team_name_is_accepted_and_does_not_scope(h: H) -> None:
    h.seed("connection", "shared", URI)
    h.seed("variable", "v", "1")
    backend = h.make_backend()
    assert backend.get_conn_value("shared", team_name="team_a") == URI
    assert backend.get_connection("shared", team_name="team_a").host == "db.example.com"
    assert backend.get_variable("v", team_name="team_a") == "1"
    assert backend.get_conn_values(["shared"], team_name="team_a") == {"shared": URI}


# --- batches and prefetch --------------------------------------------------------------------------------


def test_batch_reads_list_once_and_get_only_what_the_listing_lacks(h: H) -> None:
    h.seed("connection", "a", "http://a")
    h.seed("connection", "b", "http://b")
    h.seed("connection", "c", "http://c", labelled=False)
    backend = h.make_backend()
    backend.prepare()
    h.fake.requests.clear()
    assert backend.get_conn_values(["a", "b", "c", "missing", "a/b"]) == {
        "a": "http://a",
        "b": "http://b",
        "c": "http://c",
    }
    paths = [p for _, p in h.fake.requests]
    assert paths.count(f"/api/v1/namespaces/{h.namespace}/secrets") == 1
    assert sorted(p.rsplit("/", 1)[1] for p in paths if not p.endswith("/secrets")) == [
        "airflow-connections-c",
        "airflow-connections-missing",
    ]


def test_search_path_prefetch_serves_later_reads_from_cache(h: H) -> None:
    from credpath._search_path import SearchPath

    h.seed("connection", "warehouse", URI)
    h.seed("variable", "batch", "500")
    h.seed("variable", "other", "x")
    sp = SearchPath([h.make_backend()])
    report = sp.prefetch(connections=["warehouse", "absent", "third"], variables=["batch"])
    assert (report["connection"].hits, report["connection"].misses) == (1, 2)
    calls = h.api_calls()
    assert sp.get_connection("warehouse").password == PW
    assert sp.get_variable("batch") == "500"
    with pytest.raises(NotFound):
        sp.get_connection("absent")
    assert h.api_calls() == calls
    sp2 = SearchPath([h.make_backend()])
    assert sp2.prefetch(prefix=True)["variable"].hits == 2
    calls = h.api_calls()
    assert sp2.get_variable("other") == "x" and h.api_calls() == calls


# --- errors, deadlines -----------------------------------------------------------------------------------


def test_forbidden_and_unauthorized_are_access_denied_naming_the_secret(h: H) -> None:
    h.seed("variable", "locked", "value-s3cr3t")
    h.fake.deny(h.namespace, "airflow-variables-locked")
    with pytest.raises(AccessDenied) as info:
        h.make_backend().get_variable("locked")
    assert "'airflow-variables-locked'" in str(info.value) and "403" in str(info.value)
    assert info.value.backend == "kubernetes-secrets"
    with pytest.raises(AccessDenied, match="401"):
        h.make_backend(token="wrong-token").get_variable("other")
    h.fake.deny(h.namespace, verb="list")
    with pytest.raises(AccessDenied, match="listing"):
        h.make_backend().list_variables()


def test_5xx_is_retried_then_a_backend_error(h: H) -> None:
    h.seed("variable", "v", "1")
    backend = h.make_backend()
    h.fake.fail_next(503, 2)
    assert backend.get_variable("v") == "1"
    h.fake.fail_next(500, 50)
    with pytest.raises(BackendError) as info:
        backend.get_variable("v")
    assert not isinstance(info.value, AccessDenied | BackendTimeout)
    assert "HTTP 500" in str(info.value) and "'airflow-variables-v'" in str(info.value)
    h.fake.reset()
    h.fake.fail_next(400)
    with pytest.raises(BackendError, match="HTTP 400"):  # not retried
        backend.get_variable("v")
    assert h.fake.count() == 1


def test_unreachable_server_is_a_backend_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = KubernetesSecretsBackend(namespace="ns", host=f"http://127.0.0.1:{port}", token="t", timeout=2)
    with pytest.raises(BackendError, match="cannot reach the API server"):
        backend.get_variable("v")


def test_a_hanging_server_ends_at_the_whole_call_deadline(hanging_listener: Any) -> None:
    backend = KubernetesSecretsBackend(namespace="ns", host=hanging_listener.url, token="t", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        backend.get_variable("v")
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s" in str(info.value)


def test_a_trickling_server_ends_at_the_whole_call_deadline(h: H, fault_proxy: Any) -> None:
    h.seed("variable", "v", "1")
    proxy = fault_proxy("127.0.0.1", h.fake.port)
    proxy.add("trickle", interval=0.2)
    backend = h.make_backend(host=proxy.url, timeout=1)
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        backend.get_variable("v")
    assert time.monotonic() - started < 5


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"connections_prefix": "bad/prefix"}, "connections_prefix"),
        ({"variables_prefix": "-leading"}, "variables_prefix"),
        ({"timeout": 0}, "timeout"),
        ({"page_size": 0}, "page_size"),
        ({"host": "ftp://x"}, "host"),
        ({"in_cluster": "yes"}, "in_cluster"),
    ],
)
def test_bad_settings_name_the_setting_and_the_backend(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_backend("kubernetes-secrets", kwargs, name="k8s-prod")
    assert setting in str(info.value) and "'k8s-prod'" in str(info.value)


def test_unknown_kwarg_is_refused_by_the_registry() -> None:
    with pytest.raises(ConfigError, match="unknown kwarg"):
        create_backend("kubernetes-secrets", {"nmespace": "x"})


def test_kubeconfig_context_gives_server_token_and_namespace(h: H, tmp_path: Path) -> None:
    h.seed("variable", "from_kubeconfig", "yes")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": h.fake.endpoint}}],
                "users": [{"name": "ci", "user": {"token": h.fake.token}}],
                "contexts": [
                    {"name": "other", "context": {"cluster": "fake", "user": "ci", "namespace": "nope"}},
                    {"name": "ci", "context": {"cluster": "fake", "user": "ci", "namespace": h.namespace}},
                ],
                "current-context": "other",
            }
        )
    )
    backend = create_backend("kubernetes-secrets", {"kubeconfig": str(kubeconfig), "context": "ci"})
    assert backend.get_variable("from_kubeconfig") == "yes"
    assert backend.namespace == h.namespace


def test_a_missing_kubeconfig_is_a_config_error_at_prepare(tmp_path: Path) -> None:
    backend = KubernetesSecretsBackend(kubeconfig=str(tmp_path / "absent"), in_cluster=False)
    with pytest.raises(ConfigError, match="kubeconfig"):
        backend.prepare()


def test_prepare_makes_no_call_and_describe_hides_the_token(h: H) -> None:
    backend = h.make_backend(token="tok-s3cr3t-never-shown")
    before = h.api_calls()
    backend.prepare()
    backend.prepare()
    assert h.api_calls() == before
    assert "s3cr3t" not in backend.describe() + repr(backend)
    assert "reachable" in h.make_backend().check()


def test_import_credpath_and_construction_do_not_import_the_client() -> None:
    code = (
        "import sys, credpath\n"
        "from credpath.registry import create_backend\n"
        "b = create_backend('kubernetes-secrets', {'namespace': 'ns', 'host': 'http://127.0.0.1:1'})\n"
        "print('kubernetes' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(MissingDependency) as info:
        create_backend("kubernetes-secrets", {}, name="k8s")
    assert str(info.value) == "backend 'k8s' needs kubernetes: pip install 'credpath[kubernetes]'"


# --- migrate both ways ----------------------------------------------------------------------------------


def test_migrate_metastore_to_kubernetes_and_back(
    h: H, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath._migrate import migrate
    from credpath.backends.metastore import MetastoreBackend

    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    key = Fernet.generate_key().decode()
    source = MetastoreBackend(url=f"sqlite:///{tmp_path / 'a.db'}", fernet_key=key)
    conns = [
        Connection(
            conn_id="pg_main",
            conn_type="postgres",
            host="db",
            login="u",
            password=PW,
            schema="app",
            port=5432,
        ),
        Connection(
            conn_id="Api_Http",
            conn_type="http",
            host="api.example",
            login="svc",
            schema="v1",
            description="the API",
            extra=json.dumps({"token": "tok-s3cr3t"}),
        ),
    ]
    for conn in conns:
        source.set_connection(conn)
    source.set_variable("batch_size", "500")
    source.set_variable("settings", json.dumps({"retries": 3}))
    for fmt in ("json", "uri"):  # the uri run is left in place for the way back
        k8s = h.make_backend(connections_prefix=f"{fmt}-connections", variables_prefix=f"{fmt}-variables")
        report = migrate(source, k8s, connection_format=fmt)
        assert not report.failed, report.to_dict()
        assert k8s.list_connections() == ["Api_Http", "pg_main"]
        assert k8s.get_connection("Api_Http").to_dict() == conns[1].to_dict()
        stored = _data(h.fake, h.namespace, f"{fmt}-connections-pg-main")
        assert set(stored) == (
            {"conn_uri"} if fmt == "uri" else {"conn_type", "host", "login", "password", "schema", "port"}
        )
    back = MetastoreBackend(url=f"sqlite:///{tmp_path / 'b.db'}", fernet_key=key)
    report = migrate(k8s, back)
    assert not report.failed, report.to_dict()
    assert {c: back.get_connection(c).to_dict() for c in back.list_connections()} == {
        c.conn_id: c.to_dict() for c in conns
    }
    assert back.get_variable("batch_size") == "500" and json.loads(back.get_variable("settings")) == {
        "retries": 3
    }
    again = migrate(source, k8s)
    assert again.summary()["unchanged"] == 4 and again.written == 0


def test_closing_the_backend_ends_its_watch(h: H) -> None:
    from credpath.backends import _kubernetes_watch

    backend = h.make_backend(watch=True)
    before = h.fake.watch_requests
    assert backend.subscribe_changes(lambda *_: None) is True
    (watch,) = [w for w, _ in backend._watching]
    deadline = time.monotonic() + 10
    while h.fake.watch_requests == before:  # the stream is open at the server
        assert time.monotonic() < deadline, "the watch never reached the server"
        time.sleep(0.05)
    backend.close()
    assert watch.key not in _kubernetes_watch._watches
    assert watch._stop.is_set()
    h.fake.drop_watches()  # the open stream ends: a running watch would list and watch again
    watch._thread.join(5)
    assert not watch._thread.is_alive()
