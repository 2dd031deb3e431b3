"""Name -> object registries that lower layers read and higher layers fill (standard library only).

A lower module (`models`, `task`, `search`) looks a name up here instead of importing the module that
provides it. Who fills what:
- `MODEL_SOURCES` and `TASK_SOURCES`: families of model / task names, each deciding which names are its own
  (`acdc_lite.tracr.register()` adds the `tracr-<program>` family). `load_model` and `load_task` ask them
  before their own rules.
- `CIRCUIT_RENDERERS`: format -> drawing function, for `Circuit._repr_svg_` (`acdc_lite.render` fills "svg").
- Plugins: `acdc_lite/__init__.py` adds to MODEL_SOURCES and TASK_SOURCES one plugin, a function that imports
  the built-in providers (tracr) and calls their `register()`. A registry runs its plugins once, on its first
  lookup (or listing), so importing a low-level module registers nothing and costs nothing; a user adds
  their own providers with `MODEL_SOURCES.register(name, source)` or `MODEL_SOURCES.add_plugin(fn)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_lock = threading.RLock()


class Registry(Generic[T]):
    """Unique names -> objects; lookups first run this registry's pending plugins (functions that register)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._plugins: list[Callable[[], None]] = []
        self._ran: list[Callable[[], None]] = []

    def add_plugin(self, fn: Callable[[], None]) -> None:
        """Run `fn` once, before this registry's next lookup (it registers entries)."""
        with _lock:
            if fn not in self._plugins:
                self._plugins.append(fn)

    def load_plugins(self) -> None:
        with _lock:
            for fn in list(self._plugins):
                if fn not in self._ran:
                    self._ran.append(fn)
                    fn()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        """Add `item` under `name`; a second registration of a name is an error unless `replace`."""
        with _lock:
            if name in self._items and not replace and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
        return item

    def get(self, name: str) -> T | None:
        self.load_plugins()
        return self._items.get(name)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __getitem__(self, name: str) -> T:
        self.load_plugins()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._items) or 'none'}")
        return self._items[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class ModelSource:
    """A family of model names: `claims(name)` says whether a name is this family's (an unknown member
    included, so the error can list the family), `load(name)` builds the model (KeyError for an unknown
    member, ImportError for a missing optional dependency), `names()` lists the members."""

    name: str
    claims: Callable[[str], bool]
    load: Callable[[str], Any]
    names: Callable[[], list[str]]


@dataclass(frozen=True)
class TaskSource:
    """A family of task names: `build(name, model, n_examples=, seed=, metric=)` -> Task (KeyError for an
    unknown member, ImportError for a missing optional dependency)."""

    name: str
    claims: Callable[[str], bool]
    build: Callable[..., Any]
    names: Callable[[], list[str]]


def claiming(registry: Registry[T], name: str) -> T | None:
    """The first registered source whose `claims(name)` is true, else None."""
    for key in registry.names():
        source = registry.get(key)
        if source.claims(name):  # type: ignore[attr-defined]
            return source
    return None


MODEL_SOURCES: Registry[ModelSource] = Registry("model source")
TASK_SOURCES: Registry[TaskSource] = Registry("task source")
# format name -> function(circuit) -> text; `Circuit._repr_svg_` draws notebooks' circuits with "svg" (filled by render)
CIRCUIT_RENDERERS: Registry[Callable[[Any], str]] = Registry("circuit renderer")
