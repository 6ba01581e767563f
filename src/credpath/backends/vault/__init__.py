"""HashiCorp Vault / OpenBao backend: KV v1 and v2, Airflow's kwargs and auth methods, one login per process.

Layout, as Airflow's hashicorp provider separates ``VaultBackend`` from its internal ``_VaultClient``:
``backend.py`` (reads, writes, deletes, listings), ``kv.py`` (the KV engine: where an id lives, the v1/v2
paths, each mount's KV version, what KV's answers mean), ``session.py`` (transport, deadlines and retries,
token life cycle), ``auth.py`` (auth methods and login bodies; why there is no hvac), ``settings.py``
(the kwargs, checked once into frozen values). ``credpath.backends.vault.VaultBackend`` stays the class's
path (the registry's and users' configurations).

Differences from Airflow's ``VaultBackend`` (hashicorp provider 4.8.4), on purpose:

- ``timeout`` (Airflow's name, default 30 s) is one deadline for the whole call: connecting, every read of
  the answer, every retry and back-off, and a ``Retry-After`` wait only if it fits. Connection losses, 5xx,
  412 and 429 are retried with exponential back-off and jitter inside it; refused connections and auth
  failures are not retried. A timeout is a :class:`BackendTimeout` naming the request and the deadline.
- ``kv_engine_version`` defaults to 2 as Airflow's does (no probe); ``kv_engine_version = "auto"``
  detects the engine version of each mount once per process (``sys/internal/ui/mounts/<mount>``, what the
  ``vault kv`` CLI uses), and once per shared cache tier when one is configured.
- One authenticated HTTP session per process for identical settings (shared by backend instances; a forked
  child keeps the token and opens its own connections). Concurrent logins share one login and its
  failure; concurrent reads of one path share one request. An uncached read is 1 HTTP request; a
  handed-in token costs no ``lookup-self`` until the process has used it for ``TOKEN_LOOKUP_DELAY``
  seconds (then one, to learn its TTL and renew it).
- Token life cycle like Vault Agent: renewable tokens are renewed at about two thirds of their TTL (with
  jitter); a failed renewal is retried with back-off until the token expires or Vault denies it; then every
  auth method that can logs in again. A read refused because the token died triggers one new login.
- A variable/config secret without the ``value`` key is an error naming the path and the keys present.
- ``radius`` and ``azure`` really log in (Airflow calls the admin ``configure`` endpoints instead);
  ``gcp`` signs its login JWT locally with the service-account key (no IAM API call); ``cert`` (TLS
  client certificate) is supported in addition.
- Writes (credpath's): ``set_connection(conn, *, overwrite=True, serialization="json")`` keeps the fields
  (``"uri"``: ``conn_uri``); ``overwrite=False`` is an atomic create (check-and-set 0 on KV v2). Deletes
  remove every KV v2 version, or only the current one with the setting ``soft_delete = true``.
"""

from credpath.backends.vault.auth import AUTH_TYPES, DEFAULT_AUTH_MOUNTS, sign_jwt_rs256
from credpath.backends.vault.backend import VaultBackend, WriteConflict
from credpath.backends.vault.session import RETRY_POLICY, RETRY_STATUSES
from credpath.backends.vault.settings import ClientSettings, VaultSettings

__all__ = [
    "AUTH_TYPES",
    "DEFAULT_AUTH_MOUNTS",
    "RETRY_POLICY",
    "RETRY_STATUSES",
    "ClientSettings",
    "VaultBackend",
    "VaultSettings",
    "WriteConflict",
    "sign_jwt_rs256",
]
