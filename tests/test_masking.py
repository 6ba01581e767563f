from __future__ import annotations

import time

from credpath.masking import Masker


def test_redacts_all_registered_secrets_and_overlaps():
    masker = Masker()
    for secret in ("alpha-secret", "beta-secret-long", "secret-long-tail"):
        masker.add(secret)
    masker.redact("warm up")  # flush into batches
    masker.add("gamma-secret")
    text = "a=alpha-secret b=beta-secret-long-tail c=gamma-secret"
    assert masker.redact(text) == "a=*** b=*** c=***"


def test_short_values_and_empty_are_not_masked():
    masker = Masker()
    masker.add("abc")
    masker.add("")
    masker.add(None)
    assert masker.redact("abc def") == "abc def"
    assert len(masker) == 0


def test_url_quoted_form_is_masked_too():
    masker = Masker()
    masker.add("p@ss word!")
    assert masker.redact("uri=x://u:p%40ss%20word%21@h") == "uri=x://u:***@h"


def test_many_batches_give_same_result_as_one_regex():
    masker = Masker()
    secrets = [f"secret-{i:05d}-x" for i in range(1000)]
    text = " ".join(secrets[::37])
    for i, secret in enumerate(secrets):
        masker.add(secret)
        if i % 100 == 0:
            masker.redact("interleaved logging")
    assert set(masker.redact(text).split()) == {"***"}


def test_registration_is_amortized_constant():
    # Interleave registration and redaction, the pattern that made Airflow quadratic; the cost of the
    # second 5,000 must stay within a small factor of the first 5,000 (quadratic would be ~3x).
    def run(count: int, start: int, masker: Masker) -> float:
        began = time.perf_counter()
        for i in range(start, start + count):
            masker.add(f"value-{i:06d}-tail")
            masker.redact("a short log line")
        return time.perf_counter() - began

    masker = Masker()
    first = run(5000, 0, masker)
    second = run(5000, 5000, masker)
    assert second < first * 2.5, (first, second)


def test_concurrent_registration_and_logging_never_leaks():
    import threading

    masker = Masker()
    leaks: list[str] = []
    stop = threading.Event()

    def register() -> None:
        for i in range(2000):
            secret = f"concurrent-value-{i:05d}"
            masker.add(secret)
            # Registered before this line is logged: it must come out masked, whatever else runs.
            if secret in masker.redact(f"line with {secret}"):
                leaks.append(secret)
        stop.set()

    def log_lines() -> None:
        while not stop.is_set():
            masker.redact("another thread logging an ordinary line")

    threads = [threading.Thread(target=register), threading.Thread(target=log_lines)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert leaks == []


def test_two_threads_registering_one_new_secret_never_log_it_in_clear():
    # Issue 12: the early return in add() ran outside the lock; the second registrant of a secret the
    # first had only half-registered returned at once and logged it in clear. Frequent thread switches
    # make the window wide.
    import sys
    import threading

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    leaks: list[int] = []
    try:
        for round_ in range(300):
            masker = Masker()
            barrier = threading.Barrier(4)

            def register_and_log(i: int = round_, m: Masker = masker, b: threading.Barrier = barrier) -> None:
                secret = f"shared-value-{i:05d}-xyz"
                b.wait()
                m.add(secret)
                for _ in range(5):
                    if secret in m.redact(f"connecting with {secret} now"):
                        leaks.append(i)

            threads = [threading.Thread(target=register_and_log) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert leaks == []


def test_a_line_after_a_one_mib_secret_costs_milliseconds():
    # Issue 12: the first 200-byte line after a 1 MiB secret took 2.7-11.6 s (a 1 MiB regex compiled on
    # the logging path). Generous bound: 200 such lines in well under a second.
    import random
    import string

    masker = Masker()
    big = "".join(random.Random(7).choices(string.ascii_letters, k=1 << 20))
    masker.add(big)
    masker.add("small-secret-value")
    line = ("INFO task started: host=db.example.com user=etl small-secret-value " * 4)[:200]
    began = time.perf_counter()
    for _ in range(200):
        out = masker.redact(line)
    assert time.perf_counter() - began < 1.0
    assert "small-secret-value" not in out and "***" in out
    # The big one is still masked, whole, with its surroundings intact.
    assert masker.redact(f"a{big}b") == "a***b"
    assert masker.redact(f"x{big[:-1]}y") == f"x{big[:-1]}y"


def test_prefix_sharing_and_short_lines():
    masker = Masker()
    base = "p" * 40
    masker.add(base + "-one")
    masker.add(base + "-one-longer")
    masker.add(base)
    assert masker.redact(f"[{base}-one-longer] [{base}-one] [{base}] [{base[:-1]}]") == (
        f"[***] [***] [***] [{base[:-1]}]"
    )
    assert masker.redact("") == ""
    assert masker.redact("abc") == "abc"


def test_without_pyahocorasick_the_regex_fallback_masks_the_same(monkeypatch):
    import sys

    secrets = ["alpha-secret", "beta-secret-long", "secret-long-tail", "q" * 40 + "-a", "q" * 40, "qqqqq"]
    text = f"a=alpha-secret b=beta-secret-long-tail c={'q' * 40}-b d={'q' * 40}-a e=qqqqq"
    fast = Masker()
    fast.add_all(secrets)
    expected = fast.redact(text)
    monkeypatch.setitem(sys.modules, "ahocorasick", None)  # import raises ImportError
    slow = Masker()
    slow.add_all(secrets)
    assert slow._batches[0].automaton is None
    assert slow.redact(text) == expected == "a=*** b=*** c=***-b d=*** e=***"


class _SlowSet(set):
    """A registry set that lets other threads run right after it changes (a thread switch, made sure)."""

    def add(self, item):
        super().add(item)
        time.sleep(0.05)

    def update(self, *items):
        super().update(*items)
        time.sleep(0.05)


def test_second_registrant_never_returns_before_the_secret_is_masked():
    # Deterministic form of the race: the first registrant is switched out right after marking the
    # secret known; the second sees it known and logs it. Old code: the line was in clear.
    import threading

    masker = Masker()
    masker._known = _SlowSet()
    secret = "racy-secret-value-123"
    first = threading.Thread(target=masker.add, args=(secret,))
    first.start()
    deadline = time.monotonic() + 5
    while secret not in masker._known and time.monotonic() < deadline:
        time.sleep(0.0005)
    masker.add(secret)  # the second registrant: returns early once the secret is known
    line = masker.redact(f"using {secret}")
    first.join()
    assert secret not in line and "***" in line
