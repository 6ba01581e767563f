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
