"""Run inside the Airflow venv: the cncf.kubernetes provider's KubernetesSecretsBackend on the fake.

stdin: {"endpoint", "token", "cases": [{"kwargs", "kind", "key", "team", "sa_path"}]}; stdout: after a
marker line, one JSON list of outcomes, {"value": str | None} or {"error": exception class name}. The
provider builds its client with load_incluster_config(); here its cached ``client`` is set to the same
official client pointed at the fake, so every read is the provider's own code over HTTP.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    from _side import answer  # this script's directory is on sys.path
    from airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend import KubernetesSecretsBackend
    from kubernetes import client

    spec = json.load(sys.stdin)
    configuration = client.Configuration(host=spec["endpoint"])
    # Both keys: kubernetes 36.0.x looks the prefix up by "BearerToken" only.
    configuration.api_key = {"authorization": spec["token"], "BearerToken": spec["token"]}
    configuration.api_key_prefix = {"authorization": "Bearer", "BearerToken": "Bearer"}
    api = client.CoreV1Api(client.ApiClient(configuration))
    default_path = KubernetesSecretsBackend.SERVICE_ACCOUNT_NAMESPACE_PATH
    outcomes: list[dict[str, Any]] = []
    for case in spec["cases"]:
        KubernetesSecretsBackend.SERVICE_ACCOUNT_NAMESPACE_PATH = case.get("sa_path") or default_path
        backend = KubernetesSecretsBackend(**case["kwargs"])
        backend.client = api  # replaces the cached_property's in-cluster client
        try:
            if case["kind"] == "connection":
                value = backend.get_conn_value(case["key"], team_name=case["team"])
            elif case["kind"] == "variable":
                value = backend.get_variable(case["key"], team_name=case["team"])
            else:
                value = backend.get_config(case["key"])
            outcomes.append({"value": value})
        except Exception as exc:  # the class only: a message may carry a value
            outcomes.append({"error": type(exc).__name__})
    answer(outcomes)


if __name__ == "__main__":
    main()
