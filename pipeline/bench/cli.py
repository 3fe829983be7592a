"""The benchmarks' command line, generated from their spec dataclass as pipeline/config.py generates the jobs'.

A spec is a dataclass whose fields are declared with `pipeline.config.option` (default, help, choices, bounds);
`--name value` exists for every field, values are parsed like config values (YAML scalars, same bound checks),
and a list field takes comma-separated items: `--workers 1,2,4`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import typing

from pipeline.errors import ConfigError
from pipeline.options import bounds_text, coerce


def spec_parser(spec_cls: type, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one `--field` per field of `spec_cls`, its help, default and bounds."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in _fields(spec_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else json.dumps(default)
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += f" One of: {', '.join(f.metadata['choices'])}."
        if bounds_text(f.metadata.get("bounds") or {}):
            help_text += f" Each must be {bounds_text(f.metadata['bounds'])}." if f.type is list else \
                f" Must be {bounds_text(f.metadata['bounds'])}."
        parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS, metavar=f.type.__name__.upper(),
                            help=f"{help_text} (default: {shown})")
    return parser


def parse_spec(spec_cls: type, argv: list[str] | None, description: str):
    """`spec_cls` with the command line's values over its defaults; ConfigError names the option at fault."""
    args = vars(spec_parser(spec_cls, description).parse_args(argv))
    fields = {f.name: f for f in _fields(spec_cls)}
    values = {}
    for name, raw in args.items():
        f, where = fields[name], f"--{name}"
        if f.type is list:
            items = [item.strip() for item in str(raw).split(",") if item.strip()]
            if not items:
                raise ConfigError(f"{where}: expected a comma-separated list, got {raw!r}")
            element = copy.copy(f)  # a list holds what its default holds: counts (workers, sizes) or names
            element.type = type(f.default_factory()[0]) if f.default_factory is not dataclasses.MISSING else int
            values[name] = [coerce(item, element, where) for item in items]
        else:
            values[name] = coerce(raw, f, where)
    return spec_cls(**values)  # every value was checked against its choices and bounds as it was parsed


def _fields(spec_cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(spec_cls)
    fields = dataclasses.fields(spec_cls)
    for f in fields:
        f.type = hints[f.name]
    return list(fields)
