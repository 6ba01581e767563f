"""Cloud stores under faults: time to error and requests per lookup, before and after.

For AWS Secrets Manager (a moto server behind the loopback fault proxy of ``tests/servers/faults.py``), with
default settings (no ``timeout``, no ``config_kwargs``): time to error against a listener that accepts and
never answers, against a server that trickles one byte every 0.5 s, and against a 100 % 5xx storm and a
``429`` with ``Retry-After: 3600`` (with the requests the proxy saw); a refused port. For GCP Secret Manager
and Azure Key Vault (the HTTP fakes of ``tests/servers``): a 100 % 503 storm. Each lookup runs on a daemon
thread and is given up after ``--cap`` seconds ("> cap" in the table: still going).

Each side runs in its own subprocess with its own ``PYTHONPATH`` (its own servers too):

    .venv/bin/python bench/faults_cloud.py --before .cache/bench-before/src --after src [--cap 120]
    .venv/bin/python bench/faults_cloud.py --measure        # one side, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UNAVAILABLE = json.dumps({"__type": "ServiceUnavailable", "message": "injected"}).encode()
THROTTLED = json.dumps({"__type": "ThrottlingException", "message": "injected"}).encode()
AWS_JSON = {"Content-Type": "application/x-amz-json-1.1"}


def timed(lookup: Any, cap: float) -> dict[str, Any]:
    """Seconds until ``lookup()`` returned or raised (None if still going after ``cap``), and what."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            lookup()
            outcome["result"] = "value"
        except Exception as exc:  # the error class is the measurement
            outcome["result"] = type(exc).__name__
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(cap)
    if thread.is_alive():
        return {"seconds": None, "result": f"still going after {cap:g} s"}
    return outcome


def measure(cap: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.servers._util import free_port, stop_process, wait_for_port
    from tests.servers.faults import FaultProxy

    from credpath.backends.aws_secrets_manager import SecretsManagerBackend

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    results: dict[str, Any] = {}
    port = free_port()
    log = open(Path(tempfile.mkdtemp()) / "moto.log", "wb")
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30, proc=moto)

        def aws_case(name: str, action: str, **rule: Any) -> None:
            proxy = FaultProxy("127.0.0.1", port)
            proxy.add(action, **rule)
            backend = SecretsManagerBackend(endpoint_url=proxy.url, region_name="us-east-1")
            results[name] = {**timed(lambda: backend.get_variable("k"), cap), "requests": proxy.count()}
            proxy.stop()

        aws_case("aws_hang", "hang")
        aws_case("aws_trickle", "trickle", interval=0.5)
        aws_case("aws_5xx", "status", status=503, headers=AWS_JSON, body=UNAVAILABLE)
        aws_case("aws_429", "status", status=429, headers={**AWS_JSON, "Retry-After": "3600"}, body=THROTTLED)
        refused = SecretsManagerBackend(
            endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1"
        )
        results["aws_refused"] = timed(lambda: refused.get_variable("k"), cap)
    finally:
        stop_process(moto)
        log.close()

    # GCP Secret Manager: the REST fake, every request answered 503.
    from google.auth.credentials import AnonymousCredentials
    from tests.servers.gcp_fake import GcpSecretManagerFake

    from credpath.backends.gcp_secret_manager import SecretManagerBackend

    gcp = GcpSecretManagerFake().start()
    try:
        gcp.fail_next(503, 100000)
        backend = SecretManagerBackend(
            project_id="bench",
            credentials=AnonymousCredentials(),
            transport="rest",
            client_options={"api_endpoint": gcp.endpoint},
        )
        results["gcp_5xx"] = {
            **timed(lambda: backend.get_variable("k"), cap),
            "requests": gcp.count("access"),
        }
    finally:
        gcp.stop()

    # Azure Key Vault: the HTTPS fake, every authorized request answered 503 (azure-core's default retries).
    from tests.servers.azure_fake import AzureKeyVaultFake, StaticTokenCredential

    from credpath.backends.azure_key_vault import KeyVaultBackend

    azure = AzureKeyVaultFake(Path(tempfile.mkdtemp())).start()
    try:
        azure.fail_next(503, 100000)
        backend = KeyVaultBackend(
            vault_url=azure.vault_url,
            credential=StaticTokenCredential(azure.token),
            client_kwargs={"verify_challenge_resource": False, "connection_verify": azure.ca_path},
        )
        results["azure_5xx"] = {**timed(lambda: backend.get_variable("k"), cap), "requests": azure.count()}
    finally:
        azure.stop()
    return results


ROWS = [
    ("aws_hang", "AWS Secrets Manager, listener that never answers: time to error"),
    ("aws_trickle", "AWS Secrets Manager, 1 byte every 0.5 s: time to error"),
    ("aws_5xx", "AWS Secrets Manager, 100 % 503: time to error / requests per lookup"),
    ("aws_429", "AWS Secrets Manager, 429 Retry-After 3600: time to error / requests"),
    ("aws_refused", "AWS Secrets Manager, refused port: time to error"),
    ("gcp_5xx", "GCP Secret Manager, 100 % 503: time to error / requests per lookup"),
    ("azure_5xx", "Azure Key Vault, 100 % 503: time to error / requests per lookup"),
]


def cell(entry: dict[str, Any]) -> str:
    seconds = entry.get("seconds")
    text = entry["result"] if seconds is None else f"{seconds:.2f} s ({entry['result']})"
    if "requests" in entry:
        text += f", {entry['requests']} request(s)"
    return text


def run_side(src: str, cap: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", "--cap", str(cap)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=cap * 10 + 120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measure", action="store_true", help="measure the credpath on PYTHONPATH")
    parser.add_argument(
        "--before",
        default=str(ROOT / ".cache" / "bench-before" / "src"),
        help="src folder of the code before",
    )
    parser.add_argument("--after", default=str(ROOT / "src"), help="src folder of the code after")
    parser.add_argument("--cap", type=float, default=120.0, help="give a lookup up after this many seconds")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.cap)))
        return
    before = run_side(args.before, args.cap)
    after = run_side(args.after, args.cap)
    print("| fault (default settings) | before | after |")
    print("|---|---|---|")
    for key, label in ROWS:
        print(f"| {label} | {cell(before[key])} | {cell(after[key])} |")
    print()
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
    main()
