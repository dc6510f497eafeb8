"""Name → factory registries (one per family: losses, samplers, models, heads, methods).

A registry maps a string name to a callable that builds the object. Unknown names raise an
``UnknownNameError`` (a ``ConfigError`` and a ``KeyError``) that lists the valid names and the
closest match, so a typo in a config says how to fix itself.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


def closest(name: str, choices) -> str:
    """Return a ' (did you mean X?)' hint for ``name`` among ``choices``, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry:
    """A named collection of factories.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("ce")
    ... class CrossEntropy: ...
    >>> LOSSES.get("ce") is CrossEntropy
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{closest(name, self._items)}; "
                f"valid names: {', '.join(sorted(self._items))}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
