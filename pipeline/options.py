"""Typed options: a dataclass field that carries its help text, choices and bounds (`option`), and the
conversion and checks every value set from outside goes through (command line, YAML, Tune samples, worker
configs). `pipeline/config.py` declares the run's sections with it; the benchmarks declare their specs with it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any

import yaml

from pipeline.errors import ConfigError


def option(default: Any, help: str, choices: tuple | None = None, *, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None):
    """A dataclass field carrying its help text (used to generate --help) and its bounds.

    Bounds are declared here once and enforced wherever a value is set from outside (command line, YAML,
    Tune samples, worker configs: all go through `coerce`) and by `check_section` for sections built in code.
    """
    meta = {"help": help, "choices": choices, "bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt}}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def field_types(section_cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(section_cls)
    fields = {}
    for f in dataclasses.fields(section_cls):
        f.type = hints[f.name]
        fields[f.name] = f
    return fields


def coerce(value: Any, f: dataclasses.Field, where: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or fail naming `where`."""
    target = f.type
    if isinstance(value, str) and target is float:
        try:
            value = float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            pass
    if isinstance(value, str) and target is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: cannot parse {value!r}: {e}") from None
    try:
        if target is bool:
            if not isinstance(value, bool):
                raise ValueError
        elif target is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
        elif target is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            value = float(value)
        elif target is str:
            value = "" if value is None else str(value)
        elif target is dict:
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: expected {target.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    _check_bound(value, f, where)
    return value


def bounds_text(bounds: dict) -> str:
    """'>= 1', '> 0', 'in [0, 1)' ... for a field's declared bounds ('' when it has none)."""
    low = ("[", bounds["ge"]) if bounds.get("ge") is not None else ("(", bounds.get("gt"))
    high = ("]", bounds["le"]) if bounds.get("le") is not None else (")", bounds.get("lt"))
    if low[1] is not None and high[1] is not None:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low[1] is not None:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high[1] is not None:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return ""


def _check_bound(value: Any, f: dataclasses.Field, where: str) -> None:
    bounds = f.metadata.get("bounds") or {}
    ok = ((bounds.get("ge") is None or value >= bounds["ge"]) and (bounds.get("gt") is None or value > bounds["gt"])
          and (bounds.get("le") is None or value <= bounds["le"])
          and (bounds.get("lt") is None or value < bounds["lt"]))
    if not ok:
        raise ConfigError(f"{where}: must be {bounds_text(bounds)}, got {value}")


def check_section(section: Any, section_name: str) -> None:
    """ConfigError naming `section_name.key` for a field of a section built in code that is outside its declared
    choices or bounds (values set through `set_key` were checked when set)."""
    for name, f in field_types(type(section)).items():
        value, where = getattr(section, name), f"{section_name}.{name}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        _check_bound(value, f, where)
