"""Mutation operators of credpath's own, used by scripts/mutation beside cosmic-ray's.

cosmic-ray has no operator that deletes a statement, yet a deleted line is the commonest slip a test must
catch (a missing ``raise`` after the last retry, a state reset that never runs). ``DeleteStatement``
replaces one statement inside a function body with ``pass``. Docstrings, ``pass``, imports and
``global``/``nonlocal`` declarations are not mutated: deleting them is either no change or a NameError
that any test run shows at once.
"""

from __future__ import annotations

from typing import Any

from cosmic_ray.operators.operator import Example, Operator
from parso.python.tree import Keyword

#: Small statements whose deletion says nothing about the tests.
_SKIPPED = frozenset({"import_name", "import_from", "global_stmt", "nonlocal_stmt", "string"})


def _in_function(node: Any) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.type in ("funcdef", "async_funcdef", "lambdef"):
            return True
        parent = parent.parent
    return False


def _deletable(node: Any) -> list[Any]:
    """The deletable small statements of a ``simple_stmt`` (its children but ``;`` and NEWLINE)."""
    if node.type != "simple_stmt" or not _in_function(node):
        return []
    found = []
    for child in node.children:
        if child.type in ("newline", "operator") or child.type in _SKIPPED:
            continue
        if child.type == "keyword" and child.value == "pass":
            continue
        if child.type == "atom" and all(c.type == "string" for c in child.children):
            continue  # an implicitly concatenated docstring
        found.append(child)
    return found


class DeleteStatement(Operator):
    """Replace one statement in a function body with ``pass``."""

    def mutation_positions(self, node: Any) -> Any:
        for child in _deletable(node):
            yield (child.start_pos, child.end_pos)

    def mutate(self, node: Any, index: int) -> Any:
        target = _deletable(node)[index]
        position = node.children.index(target)
        prefix = target.prefix if hasattr(target, "value") else target.get_first_leaf().prefix
        replacement = Keyword("pass", target.start_pos, prefix=prefix)
        replacement.parent = node
        node.children[position] = replacement
        return node

    @classmethod
    def examples(cls) -> Any:
        return (
            Example("def f():\n    x = 1\n    return x\n", "def f():\n    pass\n    return x\n"),
            Example("def f():\n    x = 1\n    return x\n", "def f():\n    x = 1\n    pass\n", occurrence=1),
        )


#: Operators of this module by the name scripts/mutation uses for them.
OPERATORS: dict[str, type[Operator]] = {"credpath/DeleteStatement": DeleteStatement}
