from __future__ import annotations

import time

from credpath._masking import MIN_LENGTH, Masker


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
    masker.add("abcd")  # 4 characters: one short of Airflow's min_length_masked_secret (5)
    masker.add("")
    masker.add(None)
    masker.add(12345)  # not a string
    assert masker.redact("abc abcd def 12345") == "abc abcd def 12345"
    assert len(masker) == 0
    masker.add("abcde")  # exactly 5: masked
    assert masker.redact("x abcde y") == "x *** y"
    assert len(masker) == 1
    assert MIN_LENGTH == 5 and Masker().min_length == 5


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


def test_registration_is_amortized_logarithmic(monkeypatch):
    # Interleaved registration and redaction made Airflow quadratic. Counted, not timed (the timing is in
    # bench/masking_registration.py): n secrets make at most n * (log2 n + 1) secret-builds in all, and the
    # published batches are one per set bit of n (binary counter), so a redaction scans log2 n + 1 at most.
    import math

    from credpath import _masking as masking

    built: list[int] = []

    class CountingBatch(masking._Batch):
        __slots__ = ()

        def __init__(self, secrets):
            built.append(len(secrets))
            super().__init__(secrets)

    monkeypatch.setattr(masking, "_Batch", CountingBatch)
    masker = Masker()
    n = 1000
    for i in range(n):
        masker.add(f"value-{i:06d}-tail")
        assert masker.redact(f"x value-{i:06d}-tail y") == "x *** y"
    assert sum(built) <= n * (math.log2(n) + 1)
    assert len(built) == n  # one new batch per new secret, merged with equal-sized ones
    assert sorted(len(b.secrets) for b in masker._batches) == [1 << k for k in range(10) if n >> k & 1]
    assert len(masker) == n


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
    # The early return in add() ran outside the lock; the second registrant of a secret the
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
    # Before: the first 200-byte line after a 1 MiB secret took 2.7-11.6 s (a 1 MiB regex compiled on
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


# --- the masker's edges, the public helpers and the log hook ------------------------------


def test_duplicates_quoted_variants_clear_and_non_text():
    masker = Masker()
    masker.add("plain-value")
    masker.add("plain-value")
    assert len(masker) == 1  # its quoted form is the same text
    masker.add("with space")
    assert len(masker) == 3  # and "with%20space"
    masker.add_all(["other-value", "tiny"])
    assert len(masker) == 4
    assert masker.redact("") == "" and masker.redact(None) is None
    assert masker.redact("with%20space and other-value") == "*** and ***"
    masker.clear()
    assert len(masker) == 0 and masker.redact("plain-value") == "plain-value"
    masker.add("plain-value")  # known set was cleared too: it registers again
    assert masker.redact("plain-value") == "***"


def test_adjacent_and_separate_secrets_keep_the_text_between():
    masker = Masker(replacement="[x]")
    masker.add("first-secret")
    masker.add("second-secret")
    assert masker.redact("first-secretsecond-secret") == "[x]"  # touching spans: one mask
    assert masker.redact("a first-secret b second-secret c") == "a [x] b [x] c"
    assert masker.redact("first-secre") == "first-secre"  # a prefix alone is no hit
    masker.add("secret-second-part")
    assert masker.redact("second-secret-second-part") == "[x]"  # overlap: the union is masked


def test_custom_min_length():
    masker = Masker(min_length=8)
    masker.add("1234567")
    masker.add("12345678")
    assert masker.redact("1234567 12345678") == "1234567 ***"


def test_mask_secret_registers_in_the_default_masker_and_masks_logs(caplog):
    import logging

    import credpath
    from credpath._masking import default_masker, redact

    value = "edges-mask-me-please"
    credpath.mask_secret(value)
    assert value in default_masker()._known
    assert redact(f"a {value} b") == "a *** b"
    logging.getLogger("some.user.logger").warning("value is %s", value)
    assert value not in caplog.text and "value is ***" in caplog.text
    credpath.mask_secret("tiny")  # short: ignored, no error
    assert redact("tiny") == "tiny"


def test_install_log_masking_is_idempotent(monkeypatch):
    import logging

    from credpath import _masking as masking

    monkeypatch.setattr(logging, "_logRecordFactory", logging.LogRecord)
    monkeypatch.setattr(masking, "_factory_installed", False)
    masking.install_log_masking()
    first = logging.getLogRecordFactory()
    assert first is not logging.LogRecord
    masking.install_log_masking()
    assert logging.getLogRecordFactory() is first  # not wrapped a second time
    masking.default_masker().add("idempotent-secret-1")
    record = logging.makeLogRecord({"msg": "x %s", "args": ("idempotent-secret-1",)})
    assert record.getMessage() == "x ***"
    assert type(record).__name__ == "MaskedLogRecord"
    assert type(record).__mro__[1] is logging.LogRecord  # one layer of redaction
    assert masking._redacting_class(logging.LogRecord) is type(record)  # cached, not rebuilt


def test_masking_filter_redacts_message_and_traceback():
    import logging
    import sys

    from credpath._masking import MaskingFilter, default_masker

    masker = Masker()
    masker.add("filter-secret-1")
    flt = MaskingFilter(masker)
    assert flt.masker is masker
    record = logging.LogRecord("n", logging.INFO, "p", 1, "pw=%s", ("filter-secret-1",), None)
    assert flt.filter(record) is True
    assert (record.msg, record.args) == ("pw=***", None)
    clean = logging.LogRecord("n", logging.INFO, "p", 1, "n=%d", (3,), None)
    assert flt.filter(clean) is True
    assert (clean.msg, clean.args) == ("n=%d", (3,))  # untouched when nothing is secret
    try:
        raise RuntimeError("failed with filter-secret-1")
    except RuntimeError:
        info = sys.exc_info()
    failing = logging.LogRecord("n", logging.ERROR, "p", 1, "boom", (), info)
    flt.filter(failing)
    assert "RuntimeError: failed with ***" in failing.exc_text
    assert "filter-secret-1" not in failing.exc_text
    preset = logging.LogRecord("n", logging.ERROR, "p", 1, "boom", (), None)
    preset.exc_text = "Traceback: filter-secret-1"
    flt.filter(preset)
    assert preset.exc_text == "Traceback: ***"
    assert MaskingFilter().masker is default_masker()


def test_regex_fallback_tries_every_shorter_prefix_at_a_position(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ahocorasick", None)  # the regex fallback
    masker = Masker()
    masker.add("x" * 32 + "-long-tail")  # its automaton prefix is 32 x's
    masker.add("x" * 31)
    # At 0 the longest prefix (32 x's) is no secret here; the 31-x secret one shorter is, and must be found.
    assert masker.redact("x" * 32 + "-other") == "***-other"


def test_redact_leaves_non_text_alone_even_with_secrets_registered():
    masker = Masker()
    masker.add("some-secret")
    assert masker.redact(12345) == 12345
    assert masker.redact(None) is None and masker.redact("") == ""


def test_regex_fallback_reaches_one_character_prefixes(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ahocorasick", None)
    masker = Masker(min_length=1)
    masker.add("q")
    masker.add("qz-long-secret")
    assert masker.redact("aqx") == "a***x"  # the longest alternative fails; the 1-character one matches


def test_regex_fallback_prefers_the_longest_secret_at_a_position(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ahocorasick", None)
    masker = Masker()
    masker.add("abcdef-1")
    masker.add("abcdef-1-longer")
    assert masker.redact("[abcdef-1-longer]") == "[***]"
    assert masker.redact("[abcdef-1-]") == "[***-]"


# --- urllib.parse.quote's default form ---------------------------------------------------------------


def test_quote_default_form_keeps_the_slash_and_is_masked():
    # Airflow's Connection registers quote(password) (safe="/"): "pass/word!" -> "pass/word%21".
    from urllib.parse import quote

    masker = Masker()
    masker.add("pass/word!")
    assert quote("pass/word!") == "pass/word%21"
    line = "a pass/word%21 b pass%2Fword%21 c pass/word! d"
    assert masker.redact(line) == "a *** b *** c *** d"


# --- structured values (nested sensitive keys, any value type) ---------------------------------------


def test_redact_value_masks_every_leaf_under_a_sensitive_key_whatever_its_type():
    from credpath._masking import redact_value

    masker = Masker()
    value = {
        "password": 12345,  # Airflow 3.3.2 returns 12345 here (its open gap)
        "api_key": ["k1", 2, {"x": True}],
        "nested": {"Secret-Pin": 4321, "region": "eu", "count": 3},
        "token": None,  # nothing to hide
        "list": [{"passwd": 1.5}, "plain"],
    }
    assert redact_value(value, masker=masker) == {
        "password": "***",
        "api_key": ["***", "***", {"x": "***"}],
        "nested": {"Secret-Pin": "***", "region": "eu", "count": 3},
        "token": None,
        "list": [{"passwd": "***"}, "plain"],
    }
    assert redact_value(7, "db_password", masker=masker) == "***"
    assert redact_value([1, "a"], "auth_token", masker=masker) == ["***", "***"]


def test_redact_text_value_parses_json_and_keeps_unchanged_text_as_stored():
    from credpath._masking import redact_text_value

    masker = Masker()
    masker.add("registered-s3cr3t")
    assert (
        redact_text_value('{"password": 1, "a": "b"}', "app_settings", masker)
        == '{"password": "***", "a": "b"}'
    )
    assert redact_text_value('{"a":  "b"}', "app_settings", masker) == '{"a":  "b"}'
    assert redact_text_value("x registered-s3cr3t y", "note", masker) == "x *** y"
    assert redact_text_value("anything", "my_password", masker) == "***"
    assert redact_text_value("[1, {", "note", masker) == "[1, {"  # not JSON: text


def test_sensitive_key_names_are_normalized_as_airflow_does(monkeypatch):
    from credpath._masking import is_sensitive_key

    for name in ("API-Key", "db.password", "X Auth Token", "webhook_url", "DSN", "my_access_key"):
        assert is_sensitive_key(name), name
    for name in ("region", "app_settings", "host", 5):
        assert not is_sensitive_key(name), name
    monkeypatch.setenv("AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES", "pin, code")
    assert is_sensitive_key("card_pin")


# --- content patterns ([core] mask_secrets_content_patterns) ------------------------------------------

CONTENT_SAMPLES = {
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "aws_session_key": "ASIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a1B2" * 9,
    "slack_token": "xoxb-1234567890-abcdefghij",
    "google_api_key": "AIza" + "A" * 35,
    "stripe_live_key": "sk_live_" + "a" * 24,
    "pem_private_key_block": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    ),
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
}


def test_content_patterns_are_off_by_default():
    masker = Masker()
    line = " ".join(CONTENT_SAMPLES.values())
    assert masker.redact(line) == line


def test_content_patterns_mask_each_known_format_and_keep_the_text_around():
    masker = Masker(content_patterns=True)
    for name, sample in CONTENT_SAMPLES.items():
        assert masker.redact(f"before {sample} after") == "before *** after", name
    # Near misses stay: a longer uppercase run, a short token, a lone PEM header.
    for text in ("XAKIAIOSFODNN7EXAMPLEX", "ghp_short", "-----BEGIN RSA PRIVATE KEY----- only"):
        assert masker.redact(text) == text


def test_content_patterns_setting_is_airflows(monkeypatch):
    from credpath._masking import CONTENT_PATTERNS_ENV

    assert CONTENT_PATTERNS_ENV == "AIRFLOW__CORE__MASK_SECRETS_CONTENT_PATTERNS"
    monkeypatch.setenv(CONTENT_PATTERNS_ENV, "True")
    assert Masker().redact("k=AKIAIOSFODNN7EXAMPLE") == "k=***"
    monkeypatch.setenv(CONTENT_PATTERNS_ENV, "false")
    assert Masker().redact("k=AKIAIOSFODNN7EXAMPLE") == "k=AKIAIOSFODNN7EXAMPLE"


def test_replacement_string_is_configurable():
    masker = Masker(replacement="[hidden]", content_patterns=True)
    masker.add("pw-registered")
    assert masker.redact("a pw-registered b AKIAIOSFODNN7EXAMPLE") == "a [hidden] b [hidden]"
    assert masker.redact("a pw-registered", replacement="<x>") == "a <x>"
    assert masker.redact_value({"password": 1}) == {"password": "[hidden]"}


def test_custom_content_patterns_and_an_invalid_one():
    import pytest

    masker = Masker(content_patterns=True)
    masker.add_content_patterns({"ticket": r"\bTKT-[0-9]{6}\b"})
    assert masker.redact("see TKT-123456 and AKIAIOSFODNN7EXAMPLE") == "see *** and ***"
    with pytest.raises(ValueError, match="content pattern 'bad'"):
        masker.add_content_patterns({"bad": "(unclosed"})


def test_content_patterns_apply_inside_structured_values_and_log_records(caplog):
    import logging

    from credpath._masking import MaskingFilter

    masker = Masker(content_patterns=True)
    assert masker.redact_value({"note": "key AKIAIOSFODNN7EXAMPLE"}) == {"note": "key ***"}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", ("AKIAIOSFODNN7EXAMPLE",), None)
    MaskingFilter(masker).filter(record)
    assert record.getMessage() == "token ***"
