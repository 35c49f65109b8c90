"""A named registry: the one way this package maps user-facing names to implementations.

Every dropdown, config field and CLI choice that names an implementation (critics, video
backends, decomposers, reward kinds, frame selections, export formats) reads the keys of a
`Registry`. Adding an implementation is one `@REGISTRY.register("name")` line.

Knows nothing about what it stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import DRFInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> object map; an unknown name raises `DRFInputError` listing the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(repr(n) for n in self._entries) or "(none registered)"
            raise DRFInputError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
