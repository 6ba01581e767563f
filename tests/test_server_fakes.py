"""The fakes themselves: behaviours the backends rely on, checked with the official clients and raw HTTP."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.servers.azure_fake import AzureKeyVaultHarness
from tests.servers.gcp_fake import DISABLED, GcpSecretManagerHarness, crc32c, project_number


def test_gcp_filters_paging_and_regional_paths(gcp_secret_manager_harness: GcpSecretManagerHarness) -> None:
    h = gcp_secret_manager_harness
    client = h.client
    parent = f"projects/{h.project}"
    for sid, labels in (("alpha-1", {"team": "a"}), ("alpha-2", {"team": "b"}), ("beta-1", {})):
        client.create_secret(
            request={
                "parent": parent,
                "secret_id": sid,
                "secret": {"replication": {"automatic": {}}, "labels": labels},
            }
        )

    def names(flt: str) -> list[str]:
        return [
            s.name.rsplit("/", 1)[1] for s in client.list_secrets(request={"parent": parent, "filter": flt})
        ]

    assert names("name:alpha") == ["alpha-1", "alpha-2"]
    assert names("labels.team=a OR name:beta") == ["alpha-1", "beta-1"]
    assert names("labels.team:* AND name:2") == ["alpha-2"]
    pages = list(client.list_secrets(request={"parent": parent, "page_size": 2}).pages)
    assert [len(p.secrets) for p in pages] == [2, 1] and pages[0].total_size == 3
    regional = f"{parent}/locations/europe-west1"
    client.create_secret(
        request={"parent": regional, "secret_id": "r", "secret": {"replication": {"automatic": {}}}}
    )
    assert names("") == ["alpha-1", "alpha-2", "beta-1"]  # regional secrets are separate
    assert [s.name for s in client.list_secrets(request={"parent": regional})] == [
        f"projects/{project_number(h.project)}/locations/europe-west1/secrets/r"
    ]


def test_gcp_latest_is_newest_whatever_its_state(gcp_secret_manager_harness: GcpSecretManagerHarness) -> None:
    from google.api_core.exceptions import BadRequest, NotFound

    h = gcp_secret_manager_harness
    h.seed_secret("s", "one")
    h.seed_secret("s", "two")
    name = f"projects/{h.project}/secrets/s"
    h.fake.set_version_state(h.project, "s", 2, DISABLED)
    with pytest.raises(BadRequest, match="DISABLED state"):
        h.client.access_secret_version(name=f"{name}/versions/latest", retry=None)
    assert h.client.access_secret_version(name=f"{name}/versions/1").payload.data == b"one"
    versions = list(h.client.list_secret_versions(request={"parent": name, "filter": "state:ENABLED"}))
    assert [v.name.rsplit("/", 1)[1] for v in versions] == ["1"]
    with pytest.raises(NotFound, match="not found or has no versions"):
        h.client.access_secret_version(
            name=f"projects/{h.project}/secrets/absent/versions/latest", retry=None
        )


def test_gcp_rejects_wrong_checksum_and_bad_ids(gcp_secret_manager_harness: GcpSecretManagerHarness) -> None:
    h = gcp_secret_manager_harness
    url = f"{h.fake.endpoint}/v1/projects/{h.project}/secrets"
    assert (
        requests.post(url, params={"secretId": "bad.id"}, json={"replication": {"automatic": {}}}).status_code
        == 400
    )
    assert (
        requests.post(url, params={"secretId": "ok"}, json={"replication": {"automatic": {}}}).status_code
        == 200
    )
    body = {"payload": {"data": base64.b64encode(b"x").decode(), "dataCrc32c": str(crc32c(b"y"))}}
    answer = requests.post(f"{url}/ok:addVersion", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert requests.get(f"{url}/missing").json()["error"] == {
        "code": 404,
        "message": f"Secret [projects/{project_number(h.project)}/secrets/missing] not found.",
        "status": "NOT_FOUND",
        "details": [],
    }


def test_azure_challenge_comes_before_anything_else(azure_key_vault_harness: AzureKeyVaultHarness) -> None:
    fake = azure_key_vault_harness.fake
    for method, path in (("GET", "/secrets/x/"), ("PUT", "/secrets/bad.name"), ("GET", "/nothing-here")):
        answer = requests.request(method, fake.vault_url + path, verify=fake.ca_path)
        assert answer.status_code == 401
        assert 'resource="https://vault.azure.net"' in answer.headers["WWW-Authenticate"]
    auth = {"Authorization": f"Bearer {fake.token}"}
    answer = requests.put(
        fake.vault_url + "/secrets/bad.name", json={"value": "v"}, headers=auth, verify=fake.ca_path
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "BadParameter"


def test_azure_paging_case_and_soft_delete(azure_key_vault_harness: AzureKeyVaultHarness) -> None:
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    h = azure_key_vault_harness
    h.fake.page_size = 2
    for name in ("Bravo", "alpha", "charlie"):
        h.client.set_secret(name, "v")
    assert [p.name for p in h.client.list_properties_of_secrets()] == ["alpha", "Bravo", "charlie"]
    assert h.client.get_secret("BRAVO").name == "Bravo"
    h.client.begin_delete_secret("bravo").wait()
    with pytest.raises(ResourceNotFoundError):
        h.client.get_secret("Bravo")
    with pytest.raises(ResourceExistsError) as info:
        h.client.set_secret("bravo", "again")
    assert info.value.error.innererror["code"] == "ObjectIsDeletedButRecoverable"
    assert [d.name for d in h.client.list_deleted_secrets()] == ["Bravo"]
    h.client.purge_deleted_secret("bravo")
    assert list(h.client.list_deleted_secrets()) == []
    assert list(h.client.list_properties_of_secret_versions("unknown")) == []
