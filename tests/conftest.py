"""Test-suite wiring.

- Every module in ``tests/servers/`` is a pytest plugin (real servers and HTTP fakes as fixtures).
- Leak guard: test secrets contain the marker ``s3cr3t``. After each test, captured logs (at DEBUG),
  stdout/stderr and the test id are checked for it; a hit fails the test, unless the test is marked
  ``reveals_secrets`` (it prints a secret on purpose, e.g. ``--reveal``). Output that pytest does not
  capture (CliRunner results, subprocess output) must be checked with ``assert_no_secret``.
"""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

import pytest

SECRET_MARKER = "s3cr3t"

pytest_plugins = ["pytester"] + [
    f"tests.servers.{module.name}"
    for module in pkgutil.iter_modules([str(Path(__file__).parent / "servers")])
    if not module.name.startswith("_")
]


def assert_no_secret(text: str, *secrets: str) -> None:
    leaked = [s for s in (SECRET_MARKER, *secrets) if s and s in text]
    assert not leaked, f"secret value(s) leaked into output: {len(leaked)} hit(s)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reveals_secrets: the test prints a secret on purpose (--reveal)")
    _hypothesis_profiles()


def _hypothesis_profiles() -> None:
    """Property tests run a CI profile (examples enough to catch a grammar slip, seconds in all); a
    deeper run on request: CREDPATH_HYPOTHESIS_PROFILE=deep (ten times the examples)."""
    try:
        from hypothesis import settings
    except ImportError:
        return
    settings.register_profile("ci", max_examples=300, deadline=None)
    settings.register_profile("deep", max_examples=3000, deadline=None)
    settings.load_profile(os.environ.get("CREDPATH_HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    # The call report carries the setup and call sections too; checking teardown would double-report.
    if call.when != "call" or item.get_closest_marker("reveals_secrets"):
        return
    places = {
        "test id": item.nodeid,
        "captured log": report.caplog,
        "captured stdout": report.capstdout,
        "captured stderr": report.capstderr,
    }
    leaked = [where for where, text in places.items() if SECRET_MARKER in (text or "")]
    if leaked and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"leak guard: a test secret (marker {SECRET_MARKER!r}) appeared in: {', '.join(leaked)}"
        )
