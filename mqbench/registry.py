"""A typed registry of named things (models, datasets, methods, backends, suites, metrics).

Registration hooks receive a ``Registry[T]`` and call ``register(item)`` (or ``register.add(item)``).
A name registered twice is an error naming both plugins; a lookup miss says "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from mqbench.errors import RegistrationError, UnknownNameError


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Items of one kind, keyed by ``item.name``, remembering which plugin registered each."""

    def __init__(self, kind: str, item_type: type | None = None) -> None:
        self.kind = kind
        self.item_type = item_type
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self.current_plugin = "<direct>"

    def add(self, item: T) -> T:
        """Register ``item`` under ``item.name``; a second item of the same name is an error."""
        if self.item_type is not None and not isinstance(item, self.item_type):
            raise RegistrationError(
                f"plugin {self.current_plugin!r} registered {item!r} as a {self.kind}, "
                f"but {self.kind}s must be {self.item_type.__name__} instances")
        name = item.name
        if not isinstance(name, str) or not name or any(c.isspace() or c == "+" for c in name):
            raise RegistrationError(
                f"plugin {self.current_plugin!r} registered a {self.kind} with invalid name {name!r} "
                "(names are non-empty, without spaces or '+')")
        if name in self._items:
            raise RegistrationError(
                f"{self.kind} {name!r} is registered twice: by plugin {self._owners[name]!r} and by "
                f"plugin {self.current_plugin!r}; rename one or disable a plugin with MQBENCH_DISABLE_PLUGINS")
        self._items[name] = item
        self._owners[name] = self.current_plugin
        return item

    __call__ = add

    def remove(self, name: str) -> None:
        """Forget ``name`` (used when the plugin that registered it fails later)."""
        self._items.pop(name, None)
        self._owners.pop(name, None)

    def get(self, name: str) -> T:
        """The item called ``name``; an unknown name raises UnknownNameError with the closest names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.suggest(name), sorted(self._items)) from None

    def suggest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
