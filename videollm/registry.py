"""Name → implementation registries: one style for every pluggable part (timm's `@register_model`).

An implementation registers where it is defined, with `@REGISTRY.register("name")`. So that `import
videollm` stays light, a registry knows which `modules` hold its definitions and imports them only when a
name is first asked for; an entry may also be a lazy `"module:attr"` string. Third-party packages add
entries through an entry-point group (`videollm.compressors`, `videollm.backbones`). The CLI's choices,
`videollm list` and the demo's menus all read `names()`.

Registries: `backbones.PRESETS` (models by name), `backbones.FAMILIES`, `compressors.COMPRESSORS`,
`reasoning.MODES`, `eval.tasks.TASKS`, `quant.config.QUANT_SCHEMES`, `video.decoders.DECODERS`,
`models.MODEL_LOADERS`.

A name holds one target: registering a different one under a taken name raises `NameClashError` (two
plugins, or a typo, would otherwise replace each other silently, and which one won would depend on import
order). Registering the same target again is a no-op, so re-importing or reloading a module works.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import NameClashError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None, modules: tuple[str, ...] = (),
                 error: type[Exception] | None = None):
        self.kind = kind
        self._group = entry_point_group
        self._modules = tuple(modules)  # where the `@register` decorators live, imported on first lookup
        self._error = error
        self._entries: dict[str, str | T] = {}
        self._loaded_entry_points = False
        self._loaded_modules = False

    def register(self, name: str, target: str | T | None = None) -> Any:
        """`register("name", "pkg.mod:Cls")`, `register("name", Cls)`, or as a class decorator.

        Raises `NameClashError` when `name` already holds a different target (see `same_target`)."""
        if target is None:
            def deco(obj: T) -> T:
                self._add(name, obj)
                return obj
            return deco
        self._add(name, target)
        return target

    def _add(self, name: str, target: str | T) -> None:
        held = self._entries.get(name)
        if held is not None and not same_target(held, target):
            raise NameClashError(f"{self.kind} {name!r} is already registered to {describe(held)}; "
                                 f"refusing {describe(target)} (choose another name, or unregister the first)")
        if held is None or not isinstance(target, str):  # keep a resolved object over its lazy string
            self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Forget `name` (tests, and a plugin replacing a built-in on purpose); unknown names are ignored."""
        self._entries.pop(name, None)

    def _load_entry_points(self) -> None:
        if not self._loaded_modules:
            self._loaded_modules = True
            for module in self._modules:
                importlib.import_module(module)
        if self._loaded_entry_points or self._group is None:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self._group):
            held = self._entries.get(ep.name)
            if held is not None and not same_target(held, ep.value):  # a built-in name stays the built-in's
                logger.warning("%s %r from entry point %s ignored: the name is taken by %s", self.kind, ep.name,
                               ep.value, describe(held))
                continue
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._entries:
            from .errors import UnknownNameError

            raise (self._error or UnknownNameError)(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
            return obj
        return target


def describe(target: object) -> str:
    """"module:qualname" for a class or function (what a lazy entry names), else its repr."""
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(target)


def same_target(a: object, b: object) -> bool:
    """Whether two registrations name one implementation: the same object, equal values, a lazy "module:attr"
    string and the object it names, or a class/function defined again at the same place (a module reload);
    dataclasses (a preset) and tuples compare field by field under the same rule."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str) or _defined(a) or _defined(b):
        return describe(a) == describe(b)
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and not isinstance(a, type):
        if describe(type(a)) != describe(type(b)):
            return False
        return all(same_target(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_target(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object whose == raises is not the same registration
        return False


def _defined(obj: object) -> bool:
    """A class, function or method: something with a definition site."""
    return isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__")
