"""Registries refuse a name that already holds a different implementation; the same one again is a no-op."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import pytest

from videollm.errors import NameClashError, VideoLLMError
from videollm.registry import Registry, same_target


class First:
    pass


class Second:
    pass


def test_a_clashing_name_is_refused_with_both_targets_named():
    reg: Registry[type] = Registry("widget")
    reg.register("w", First)
    with pytest.raises(NameClashError) as err:
        reg.register("w", Second)
    msg = str(err.value)
    assert "widget 'w' is already registered to" in msg and "First" in msg and "Second" in msg
    assert isinstance(err.value, VideoLLMError)
    assert reg.get("w") is First  # the first registration stands

    with pytest.raises(NameClashError):
        @reg.register("w")
        class Third:
            pass
    assert reg.get("w") is First


def test_the_same_target_again_is_idempotent():
    reg: Registry[type] = Registry("widget")
    reg.register("w", First)
    reg.register("w", First)
    reg.register("w")(First)
    assert reg.names() == ["w"] and reg.get("w") is First


def test_a_lazy_string_and_the_object_it_names_are_one_target():
    reg: Registry[type] = Registry("widget")
    reg.register("w", f"{__name__}:First")
    reg.register("w", First)  # the definition site registering itself after a lazy entry
    assert reg.get("w") is First
    reg.register("w", f"{__name__}:First")  # and back: the resolved object is kept
    assert reg.get("w") is First
    with pytest.raises(NameClashError):
        reg.register("w", f"{__name__}:Second")


def test_unregister_frees_the_name():
    reg: Registry[type] = Registry("widget")
    reg.register("w", First)
    reg.unregister("w")
    reg.unregister("never-there")
    reg.register("w", Second)
    assert reg.get("w") is Second


@dataclass(frozen=True)
class Entry:
    build: object
    size: int = 1


def test_dataclass_entries_compare_field_by_field():
    assert same_target(Entry(First, 1), Entry(First, 1))
    assert not same_target(Entry(First, 1), Entry(First, 2))
    assert not same_target(Entry(First), Entry(Second))


def test_module_reload_re_registers_without_a_clash(tmp_path, monkeypatch):
    """A reloaded module defines new class objects at the same place: that is the same registration."""
    pkg = tmp_path / "reg_reload_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "holder.py").write_text("from videollm.registry import Registry\nREG = Registry('thing')\n")
    (pkg / "things.py").write_text("from .holder import REG\n\n@REG.register('a')\nclass A:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        things = importlib.import_module("reg_reload_pkg.things")
        holder = importlib.import_module("reg_reload_pkg.holder")
        first = holder.REG.get("a")
        importlib.reload(things)
        assert holder.REG.get("a") is things.A  # no error, and the reloaded definition is the one used
        assert same_target(first, things.A) and first is not things.A
    finally:
        for name in [m for m in sys.modules if m.startswith("reg_reload_pkg")]:
            del sys.modules[name]


def test_built_in_registries_refuse_a_clash():
    from videollm.compressors import COMPRESSORS
    from videollm.quant.config import QUANT_SCHEMES

    assert "uniform" in COMPRESSORS  # the built-ins are registered on first lookup
    with pytest.raises(NameClashError, match="compressor 'uniform'"):
        COMPRESSORS.register("uniform", Second)
    with pytest.raises(NameClashError, match="quantization scheme 'int8'"):
        QUANT_SCHEMES.register("int8", Second)
    assert COMPRESSORS.get("uniform").__name__ == "UniformCompressor"


def test_a_name_taken_before_the_built_ins_load_is_refused_when_they_do(tmp_path, monkeypatch):
    """A plugin that takes a built-in's name before the first lookup: the built-in's registration says so."""
    pkg = tmp_path / "reg_late_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from videollm.registry import Registry\n"
                                     "REG = Registry('thing', modules=('reg_late_pkg.builtin',))\n")
    (pkg / "builtin.py").write_text("from . import REG\n\n@REG.register('a')\nclass A:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        reg = importlib.import_module("reg_late_pkg").REG
        reg.register("a", Second)
        with pytest.raises(NameClashError, match="thing 'a' is already registered to .*Second; refusing "
                                                 "reg_late_pkg.builtin:A"):
            reg.names()
    finally:
        for name in [m for m in sys.modules if m.startswith("reg_late_pkg")]:
            del sys.modules[name]
