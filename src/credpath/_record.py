"""Value classes for the start-up path, without the dataclass decorator's cost at import.

On Python 3.11 ``@dataclass`` compiles each generated method with ``exec`` when the class is defined: about
1 ms a class, and the CLI defines a dozen on its way to one lookup. A :class:`Record` names its fields once
and writes its ``__init__`` by hand (compiled into the ``.pyc`` like any function); equality, hashing, repr
and ``replace`` come from here with the dataclass rules: equal when the class and the compared fields are;
a mutable record is unhashable; repr leaves out hidden fields (they may hold secrets). :class:`Frozen`
refuses assignment with dataclasses' own ``FrozenInstanceError``.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any, ClassVar, NoReturn, Self

__all__ = ["Frozen", "Record"]


class Record:
    __slots__ = ()
    #: The fields, in the constructor's order.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: Fields left out of equality and hashing.
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    #: Fields left out of repr.
    _hidden: ClassVar[frozenset[str]] = frozenset()

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields if name not in self._uncompared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    def __repr__(self) -> str:
        shown = (f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._hidden)
        return f"{self.__class__.__qualname__}({', '.join(shown)})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (as ``dataclasses.replace``: an unknown name is a TypeError)."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return self.__class__(**values)


class Frozen(Record):
    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
