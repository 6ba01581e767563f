"""Side-by-side benchmarks: credpath vs Apache Airflow 3.3.2, same servers, same data, one run.

    .venv/bin/python bench/run.py [--n 1000] [--out bench/RESULTS.md]

Starts a moto server (AWS Secrets Manager) and an OpenBao dev server (Vault API) on loopback, seeds N
connections in each, migrates an Airflow SQLite metadata database, then runs each job in a fresh
interpreter of the Airflow virtualenv (``.cache/airflow-venv``, built like the integration tier's; credpath
is installed there too, so both sides use the same boto3/hvac). Writes a Markdown table of ratios and the
raw figures as JSON. No secret value is printed: the seeded passwords are never read back to the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers._util import free_port, stop_process, wait_for_port  # noqa: E402
from tests.servers.airflow_env import VENV, build_venv, clean_environment, venv_is_complete  # noqa: E402

WORKER = ROOT / "bench" / "worker.py"
AWS_BACKEND = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
VAULT_BACKEND = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
VAULT_TOKEN = "bench-root-token"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Servers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.moto_port = free_port()
        self.procs.append(
            subprocess.Popen(
                [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.bao_port = free_port()
        self.procs.append(
            subprocess.Popen(
                [
                    str(bin_dir / "bao"),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={VAULT_TOKEN}",
                    f"-dev-listen-address=127.0.0.1:{self.bao_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, HOME=str(self.tmp)),
            )
        )
        wait_for_port(self.moto_port, proc=self.procs[0])
        wait_for_port(self.bao_port, proc=self.procs[1])
        time.sleep(0.5)

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def vault_url(self) -> str:
        return f"http://127.0.0.1:{self.bao_port}"

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def seed(servers: Servers, n: int) -> list[str]:
    import boto3
    import hvac

    ids = [f"bench_{i:05d}" for i in range(n)]
    client = boto3.client(
        "secretsmanager",
        endpoint_url=servers.moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    vault = hvac.Client(url=servers.vault_url, token=VAULT_TOKEN)
    for i, conn_id in enumerate(ids):
        uri = f"postgres://user{i}:bench-password-{i:05d}@db{i}.example.com:5432/analytics"
        client.create_secret(Name=f"airflow/connections/{conn_id}", SecretString=uri)
        vault.secrets.kv.v2.create_or_update_secret(
            path=f"connections/{conn_id}", secret={"conn_uri": uri}, mount_point="secret"
        )
    return ids


class Bench:
    def __init__(self, servers: Servers, tmp: Path, ids: list[str]) -> None:
        self.servers, self.tmp, self.ids = servers, tmp, ids
        self.home = tmp / "airflow-home"
        self.home.mkdir()
        self.python = str(VENV / "bin" / "python")
        self.base_env = clean_environment(self.home, VENV)
        self.base_env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=servers.moto_url,
            CREDPATH_HOME=str(tmp / "credpath-home"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        subprocess.run(
            [str(VENV / "bin" / "airflow"), "db", "migrate"],
            env=self.base_env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.configs = {
            "aws": self._config("aws", "aws-secrets-manager", {"endpoint_url": servers.moto_url}),
            "vault": self._config(
                "vault",
                "vault",
                {
                    "url": servers.vault_url,
                    "token": VAULT_TOKEN,
                    "mount_point": "secret",
                    "kv_engine_version": 2,
                },
            ),
        }

    def _config(self, name: str, type_name: str, kwargs: dict[str, Any]) -> str:
        # The same chain as Airflow's: the store, then env, then the metastore.
        path = self.tmp / f"credpath-{name}.toml"
        path.write_text(
            f'[[backends]]\ntype = "{type_name}"\nkwargs = {_toml_inline(kwargs)}\n\n'
            '[[backends]]\ntype = "env"\n\n[[backends]]\ntype = "metastore"\n'
        )
        return str(path)

    def airflow_env(self, store: str, **extra: str) -> dict[str, str]:
        if store == "aws":
            kwargs = {"connections_prefix": "airflow/connections", "region_name": "us-east-1"}
            return {
                "AIRFLOW__SECRETS__BACKEND": AWS_BACKEND,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
                **extra,
            }
        kwargs = {
            "url": self.servers.vault_url,
            "token": VAULT_TOKEN,
            "mount_point": "secret",
            "connections_path": "connections",
        }
        return {
            "AIRFLOW__SECRETS__BACKEND": VAULT_BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
            **extra,
        }

    def job(self, name: str, **spec: Any) -> dict[str, Any]:
        spec["job"] = name
        log(f"{name} {spec.get('label', '')}")
        env = dict(self.base_env)
        env.update(spec.pop("env", {}))
        result = subprocess.run(
            [self.python, str(WORKER), json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            # Only the last line of the error: the worker prints no secrets, but keep output short.
            tail = result.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
            raise RuntimeError(f"job {name} failed: {tail[0][:300]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def cli(
        self, argv: list[str], env: dict[str, str], runs: int = 3, expect_rc: int = 0
    ) -> dict[str, float]:
        times, peaks = [], []
        probe = (
            "import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "r.returncode)"
        )
        full_env = dict(self.base_env, **env)
        for _ in range(runs):
            out = subprocess.run(
                [self.python, "-c", probe, *argv], env=full_env, capture_output=True, text=True, check=True
            ).stdout.split()
            if int(out[2]) != expect_rc:
                raise RuntimeError(f"{argv[0]} exited {out[2]}")
            times.append(float(out[0]))
            peaks.append(int(out[1]) / 1024)
        return {"median_s": statistics.median(times), "peak_mb": max(peaks)}

    def import_time(self, module: str, runs: int = 5) -> float:
        samples = []
        for _ in range(runs):
            code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
            out = subprocess.run(
                [self.python, "-c", code], env=self.base_env, capture_output=True, text=True, check=True
            )
            samples.append(float(out.stdout.strip()))
        return statistics.median(samples)


def _toml_inline(data: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in data.items()) + " }"


def run(n: int, misses: int) -> dict[str, Any]:
    if not venv_is_complete():
        log("building the Airflow 3.3.2 virtualenv (first run only)")
        build_venv()
    results: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="credpath-bench-") as tmp_name:
        tmp = Path(tmp_name)
        servers = Servers(tmp)
        servers.start()
        try:
            log(f"seeding {n} connections in moto and OpenBao")
            ids = seed(servers, n)
            bench = Bench(servers, tmp, ids)
            miss_ids = [f"missing_{i:05d}" for i in range(misses)]
            for store in ("aws", "vault"):
                config = bench.configs[store]
                results[f"{store}_airflow"] = bench.job(
                    "airflow_resolve", ids=ids, env=bench.airflow_env(store), label=store
                )
                results[f"{store}_credpath"] = bench.job(
                    "credpath_resolve", ids=ids, config=config, label=store
                )
                results[f"{store}_credpath_prefetch"] = bench.job(
                    "credpath_resolve", ids=ids, config=config, prefetch=True, label=store
                )
            results["cache_airflow"] = bench.job(
                "airflow_cache", ids=ids, env=bench.airflow_env("aws", AIRFLOW__SECRETS__USE_CACHE="True")
            )
            results["cache_credpath"] = bench.job("credpath_cache", ids=ids, config=bench.configs["aws"])
            results["miss_airflow"] = bench.job("airflow_miss", ids=miss_ids, env=bench.airflow_env("aws"))
            results["miss_credpath"] = bench.job("credpath_miss", ids=miss_ids, config=bench.configs["aws"])
            results["masker_airflow"] = bench.job("airflow_masker", counts=[250, 500, 1000])
            results["masker_credpath"] = bench.job(
                "credpath_masker", counts=[250, 500, 1000, 2500, 5000, 10000]
            )
            log("CLI runs")
            results["cli_airflow"] = bench.cli(
                [str(VENV / "bin" / "airflow"), "connections", "get", ids[1], "-o", "json"],
                bench.airflow_env("aws"),
            )
            results["cli_credpath"] = bench.cli(
                [str(VENV / "bin" / "credpath"), "connections", "get", ids[1], "--json"],
                {"CREDPATH_CONFIG": bench.configs["aws"]},
            )
            results["cli_airflow_miss"] = bench.cli(
                [str(VENV / "bin" / "airflow"), "connections", "get", "missing_x", "-o", "json"],
                bench.airflow_env("aws"),
                runs=1,
                expect_rc=1,
            )
            results["cli_credpath_miss"] = bench.cli(
                [str(VENV / "bin" / "credpath"), "connections", "get", "missing_x", "--json"],
                {"CREDPATH_CONFIG": bench.configs["aws"]},
                runs=1,
                expect_rc=1,
            )
            log("import times")
            results["import_airflow_s"] = bench.import_time("airflow")
            results["import_credpath_s"] = bench.import_time("credpath")
        finally:
            servers.stop()
    return results


def ratio(airflow: float, credpath: float) -> str:
    if credpath <= 0:
        return "n/a"
    value = airflow / credpath
    return f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


def render(results: dict[str, Any]) -> str:
    n = results["n"]
    rows = []
    for store, name in (("aws", "AWS Secrets Manager (moto)"), ("vault", "Vault (OpenBao)")):
        a, c, p = (
            results[f"{store}_airflow"],
            results[f"{store}_credpath"],
            results[f"{store}_credpath_prefetch"],
        )
        rows.append(
            (
                f"{name}: resolve {n:,} distinct connections, total",
                f"{a['cold']['total_s']:.2f} s",
                f"{c['cold']['total_s']:.2f} s",
                ratio(a["cold"]["total_s"], c["cold"]["total_s"]),
            )
        )
        rows.append(
            (
                f"{name}: same with credpath prefetch (batched)",
                f"{a['cold']['total_s']:.2f} s",
                f"{p['cold']['total_s']:.2f} s",
                ratio(a["cold"]["total_s"], p["cold"]["total_s"]),
            )
        )
        rows.append(
            (
                f"{name}: median / p99 per connection",
                f"{a['cold']['median_ms']:.2f} / {a['cold']['p99_ms']:.2f} ms",
                f"{c['cold']['median_ms']:.2f} / {c['cold']['p99_ms']:.2f} ms",
                ratio(a["cold"]["median_ms"], c["cold"]["median_ms"]),
            )
        )
        rows.append(
            (
                f"{name}: HTTP requests for {n:,} connections (no prefetch / prefetch)",
                f"{a['cold_calls']:,}",
                f"{c['cold_calls']:,} / {p['cold_calls']:,}",
                ratio(a["cold_calls"], p["cold_calls"]),
            )
        )
        rows.append(
            (
                f"{name}: the same {n:,} again (requests)",
                f"{a['warm']['total_s']:.2f} s ({a['warm_calls']:,})",
                f"{c['warm']['total_s']:.4f} s ({c['warm_calls']:,})",
                ratio(a["warm"]["total_s"], c["warm"]["total_s"]),
            )
        )
    ca, cc = results["cache_airflow"], results["cache_credpath"]
    rows.append(
        (
            "cached hit (Airflow: `[secrets] use_cache`; credpath: default cache)",
            f"{ca['hit']['median_ms'] * 1000:.1f} µs",
            f"{cc['hit']['median_ms'] * 1000:.2f} µs",
            ratio(ca["hit"]["median_ms"], cc["hit"]["median_ms"]),
        )
    )
    ma, mc = results["miss_airflow"], results["miss_credpath"]
    rows.append(
        (
            "connection miss through the whole chain (AWS, env, metastore), median",
            f"{ma['miss']['median_ms']:.2f} ms, {ma['calls_per_miss']:.1f} req",
            f"{mc['miss']['median_ms']:.2f} ms, {mc['calls_per_miss']:.1f} req",
            ratio(ma["miss"]["median_ms"], mc["miss"]["median_ms"]),
        )
    )
    rows.append(
        (
            "the same miss again (credpath caches misses 60 s)",
            f"{ma['miss']['median_ms']:.2f} ms, {ma['calls_per_miss']:.1f} req",
            f"{mc['repeat_miss']['median_ms'] * 1000:.2f} µs, {mc['calls_per_repeat_miss']:.1f} req",
            ratio(ma["miss"]["median_ms"], mc["repeat_miss"]["median_ms"]),
        )
    )
    a1000 = next(p["elapsed_s"] for p in results["masker_airflow"]["curve"] if p["secrets"] == 1000)
    c1000 = next(p["elapsed_s"] for p in results["masker_credpath"]["curve"] if p["secrets"] == 1000)
    rows.append(
        (
            "masker: register 1,000 secrets, one redacted log line after each",
            f"{a1000:.2f} s",
            f"{c1000:.3f} s",
            ratio(a1000, c1000),
        )
    )
    cli_a, cli_c = results["cli_airflow"], results["cli_credpath"]
    rows.append(
        (
            "CLI `connections get ID` (JSON) end to end, median of 3",
            f"{cli_a['median_s']:.2f} s",
            f"{cli_c['median_s']:.2f} s",
            ratio(cli_a["median_s"], cli_c["median_s"]),
        )
    )
    miss_a, miss_c = results["cli_airflow_miss"], results["cli_credpath_miss"]
    rows.append(
        (
            "CLI `connections get` of a missing id",
            f"{miss_a['median_s']:.2f} s",
            f"{miss_c['median_s']:.2f} s",
            ratio(miss_a["median_s"], miss_c["median_s"]),
        )
    )
    rows.append(
        (
            "CLI peak memory",
            f"{cli_a['peak_mb']:.0f} MB",
            f"{cli_c['peak_mb']:.0f} MB",
            ratio(cli_a["peak_mb"], cli_c["peak_mb"]),
        )
    )
    rows.append(
        (
            "`import airflow` vs `import credpath`",
            f"{results['import_airflow_s'] * 1000:.0f} ms",
            f"{results['import_credpath_s'] * 1000:.1f} ms",
            ratio(results["import_airflow_s"], results["import_credpath_s"]),
        )
    )
    curve = ", ".join(
        f"{p['secrets']:,}: {p['elapsed_s']:.3f} s" for p in results["masker_credpath"]["curve"]
    )
    acurve = ", ".join(
        f"{p['secrets']:,}: {p['elapsed_s']:.2f} s" for p in results["masker_airflow"]["curve"]
    )
    lines = [
        "# credpath vs Apache Airflow 3.3.2, side by side",
        "",
        f"Measured {results['date']} on {results['machine']}; both sides in one run, against the same moto",
        "and OpenBao servers on loopback with the same data; each job in a fresh interpreter of one",
        "virtualenv (same boto3/hvac). HTTP requests are counted the same way on both sides",
        "(urllib3 `urlopen`).",
        "Reproduce: `.venv/bin/python bench/run.py` (raw figures: `bench/results.json`).",
        "",
        "| work | Airflow 3.3.2 | credpath | credpath ahead by |",
        "|---|---|---|---|",
        *[f"| {w} | {a} | {c} | {r} |" for w, a, c, r in rows],
        "",
        f"Masker curve, cumulative time (credpath): {curve}.",
        f"Airflow's masker on the same loop: {acurve}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="distinct connections to resolve")
    parser.add_argument("--misses", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    results = run(args.n, args.misses)
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    args.out.write_text(render(results))
    args.out.with_name("results.json").write_text(json.dumps(results, indent=2))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
