"""Dataclasses built from user-given values (CLI flags, JSON, YAML), every name and type checked once.

On the base floor so each config's owner (compressors, quantization, the pipeline) builds its own.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Protocol, TypeVar

from .errors import InvalidRequestError

D = TypeVar("D")


class Validated(Protocol):
    def validate(self) -> None: ...


C = TypeVar("C", bound=Validated)


def build_dataclass(cls: type[D], values: dict[str, Any], what: str = "option") -> D:
    """`cls(**values)` with every name and value type checked against `cls`'s annotations, so
    `tokens_per_frame="x"` or a misspelt name is one clear `InvalidRequestError`, never a TypeError."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidRequestError(
            f"unknown {what}(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    out = {}
    for k, v in values.items():
        ok, coerced = _coerce(v, hints.get(k, Any))
        if not ok:
            raise InvalidRequestError(f"{what} {k}={v!r}: expected {_type_name(hints.get(k, Any))}")
        out[k] = coerced
    return cls(**out)


def build_config(cls: type[C], values: C | Mapping[str, Any] | None, what: str, refusal: str) -> C:
    """The one way user-given options become a config (a compressor's, the reasoning modes'): a dict's names
    and types checked (`build_dataclass`), a config object's types (`check_fields`), then its `validate()`. A
    config that passed this already is trusted as it is (`mark_checked`); any other value is refused with
    `refusal` ("… takes a XConfig or an object of option names and values") and its type."""
    if isinstance(values, cls) and is_checked(values):
        return values
    if values is None:
        cfg = cls()
    elif isinstance(values, cls):
        check_fields(values, what)
        cfg = values
    elif isinstance(values, Mapping):
        cfg = build_dataclass(cls, dict(values), what=what)
    else:
        raise InvalidRequestError(f"{refusal}, not a {type(values).__name__}")
    cfg.validate()
    return mark_checked(cfg)


_CHECKED = "_videollm_checked"


def mark_checked(obj: D) -> D:
    """Record that `obj` (a config dataclass) passed its one validator, so code it is handed to trusts it
    instead of checking it again. The record holds the values checked: a field set afterwards
    (`cfg.threshold = 2.0`) or a `dataclasses.replace` copy is checked anew."""
    obj.__dict__[_CHECKED] = _values(obj)
    return obj


def is_checked(obj: object) -> bool:
    """Whether `obj` passed its validator with the values it holds now (`mark_checked`)."""
    seen = getattr(obj, "__dict__", {}).get(_CHECKED)
    return seen is not None and seen == _values(obj)


def _values(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in fields(obj) if f.init)


def check_fields(obj: Any, what: str = "option") -> None:
    """Refuse a dataclass instance built in code with a value of the wrong type (`Config(threshold="x")`):
    the same check and message `build_dataclass` gives a user-given dict."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if f.init:
            v = getattr(obj, f.name)
            if not _coerce(v, hints.get(f.name, Any))[0]:
                raise InvalidRequestError(f"{what} {f.name}={v!r}: expected {_type_name(hints.get(f.name, Any))}")


def non_defaults(cfg: Any) -> dict[str, Any]:
    """The fields of dataclass `cfg` that differ from their defaults: `{}` and an explicit default agree
    (what a resumed run's fingerprint compares, and what a config given beside saved weights overrides)."""
    default = type(cfg)()
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)
            if f.init and getattr(cfg, f.name) != getattr(default, f.name)}


def _coerce(v: Any, tp: Any) -> tuple[bool, Any]:
    if tp is Any:
        return True, v
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, c = _coerce(v, arg)
            if ok:
                return True, c
        return False, v
    if tp is type(None):
        return v is None, v
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool), float(v) if isinstance(v, (int, float)) else v
    if tp is str:
        return isinstance(v, str), v
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False, v
        return True, (tuple(v) if (origin or tp) is tuple else list(v))
    if origin is dict or tp is dict:
        return isinstance(v, dict), v
    if dataclasses.is_dataclass(tp):
        if isinstance(v, tp):
            return True, v
        return (True, build_dataclass(tp, v)) if isinstance(v, dict) else (False, v)
    return True, v


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
