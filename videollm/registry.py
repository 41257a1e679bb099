"""Name → implementation registries: one style for every pluggable part (timm's `@register_model`).

An implementation registers where it is defined, with `@REGISTRY.register("name")`. So that `import
videollm` stays light, a registry knows which `modules` hold its definitions and imports them only when a
name is first asked for; an entry may also be a lazy `"module:attr"` string. Third-party packages add
entries through an entry-point group (`videollm.compressors`, `videollm.backbones`). The CLI's choices,
`videollm list` and the demo's menus all read `names()`.

Registries: `backbones.PRESETS` (models by name), `backbones.FAMILIES`, `compressors.COMPRESSORS`,
`reasoning.MODES`, `eval.tasks.TASKS`, `quant.config.QUANT_SCHEMES`, `video.decoders.DECODERS`,
`models.MODEL_LOADERS`.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

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
        """`register("name", "pkg.mod:Cls")`, `register("name", Cls)`, or as a class decorator."""
        if target is None:
            def deco(obj: T) -> T:
                self._entries[name] = obj
                return obj
            return deco
        self._entries[name] = target
        return target

    def _load_entry_points(self) -> None:
        if not self._loaded_modules:
            self._loaded_modules = True
            for module in self._modules:
                importlib.import_module(module)
        if self._loaded_entry_points or self._group is None:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self._group):
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
