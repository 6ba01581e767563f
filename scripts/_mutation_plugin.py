"""pytest plugin loaded by scripts/mutation only: caps Hypothesis examples so one mutant's run stays short.

The property tests ask for thousands of examples (worth it once per CI run, not once per mutant); a mutant
that a property kills is almost always killed within the first hundred. CREDPATH_MUTATION_EXAMPLES sets
the cap (default 100).
"""

from __future__ import annotations

import os
import sys

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "hypothesis" not in sys.modules:  # no property test collected: importing it would cost 1 s a run
        return
    from hypothesis import settings

    cap = int(os.environ.get("CREDPATH_MUTATION_EXAMPLES", "100"))
    for item in items:
        test = getattr(item, "obj", None)
        current = getattr(test, "_hypothesis_internal_use_settings", None)
        if current is not None and current.max_examples > cap:
            test._hypothesis_internal_use_settings = settings(current, max_examples=cap, database=None)
