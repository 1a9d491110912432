"""Instance families: presets whose instances differ in more than seeds (optimizer, batch size, width, data, task).

A preset's optional ``[family]`` table maps axis names to lists of options; each option is a table of dotted config
keys applied on top of the preset (``optimizer = [{ "optim.name" = "sgd" }, { "optim.name" = "adam" }]``). Every
instance draws one option per axis (``rlsched.control.env.make_instances``), so no single constant LR suits all of them.
Options are kept as ``("section.key", "TOML value")`` pairs, the form ``config.with_overrides`` applies, which keeps
the config frozen, hashable and printable back to TOML.

This module checks the shape of a family; ``rlsched.config`` applies its options (``check_family``'s ``apply``) so
the config's own checks judge every value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tomli_w

Overrides = tuple[tuple[str, str], ...]  # ("section.key", "TOML value") pairs, applied in order
FORBIDDEN = "env"  # the section no option may set


@dataclass(frozen=True)
class Axis:
    """One way instances differ: its name and its options (each a set of config overrides)."""

    name: str
    options: tuple[Overrides, ...]


def toml_value(value: Any) -> str:
    """A TOML value as text on one line (what a preset file or ``--set section.key=...`` would hold): tomli-w
    writes the scalars (escapes, unicode, inf), containers stay inline so a value fits in an override pair."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _option(raw: Any, where: str) -> Overrides:
    """One option: ``{"section.key" = value}`` or ``{section = {key = value}}`` (TOML's bare dotted keys)."""
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{where}: {raw!r} is not a table; write an inline table of dotted config keys, e.g. "
            '{ "optim.name" = "adam" }'
        )
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        if "." in key:
            pairs.append((key, toml_value(value)))
        elif isinstance(value, Mapping):
            pairs += [(f"{key}.{k}", toml_value(v)) for k, v in value.items()]
        else:
            raise ValueError(f'{where}: key {key!r} names no setting; write section.key, e.g. "optim.name"')
    for key, _ in pairs:
        if key.partition(".")[0] == FORBIDDEN:
            raise ValueError(
                f"{where}: {key!r} is an env setting; every instance of a family shares the "
                "observation and action spaces and the epoch budget, so set [env] for the whole preset, "
                "not per option"
            )
    return tuple(pairs)


def parse_family(raw: Any, where: str) -> tuple[Axis, ...]:
    """The axes of a ``[family]`` table, in file order; the shape is checked here, the values by ``check_family``."""
    if not isinstance(raw, Mapping):
        raise ValueError(
            f'{where} must be a table of axes, e.g. optimizer = [{{ "optim.name" = "sgd" }}, '
            f'{{ "optim.name" = "adam" }}]; got {raw!r}'
        )
    axes = []
    for name, options in raw.items():
        if not isinstance(options, (list, tuple)) or not options:
            raise ValueError(
                f"{where} {name}: an axis needs a non-empty list of options (inline tables); got "
                f"{options!r}; delete the axis if its instances should not differ"
            )
        axes.append(
            Axis(name, tuple(_option(o, f"{where} {name} option {i + 1}") for i, o in enumerate(options)))
        )
    return tuple(axes)


def describe(axis: Axis, index: int) -> str:
    """``optimizer option 2 {optim.name = "adam"}``: how errors name an option."""
    body = ", ".join(f"{k} = {v}" for k, v in axis.options[index])
    return f"{axis.name} option {index + 1} {{{body}}}"


def check_family(axes: tuple[Axis, ...], apply: Callable[[Overrides, str], object], where: str) -> None:
    """Each key belongs to one axis (else which option wins would depend on axis order), and every combination of
    one option per axis must pass ``apply`` (the config's checks; it raises naming the key). A failing combination
    names an option that fails on its own, else the whole combination."""
    owner: dict[str, str] = {}
    for axis in axes:
        for key in {k for option in axis.options for k, _ in option}:
            if owner.setdefault(key, axis.name) != axis.name:
                raise ValueError(
                    f"{where}: axes {owner[key]!r} and {axis.name!r} both set {key!r}; move it into one "
                    "axis (options of one axis can set several keys)"
                )
    for picks in itertools.product(*(range(len(axis.options)) for axis in axes)):
        try:
            apply(
                tuple(pair for axis, i in zip(axes, picks) for pair in axis.options[i]),
                f"{where} {' + '.join(describe(axis, i) for axis, i in zip(axes, picks))}",
            )
        except ValueError:
            for axis, i in zip(axes, picks):
                apply(axis.options[i], f"{where} {describe(axis, i)}")
            raise


def merge(base: tuple[Axis, ...], new: tuple[Axis, ...]) -> tuple[Axis, ...]:
    """``new``'s axes replace ``base``'s axes of the same name and add the others (overrides of a family preset)."""
    merged = {axis.name: axis for axis in base}
    merged.update((axis.name, axis) for axis in new)
    return tuple(merged.values())


def family_toml(axes: tuple[Axis, ...]) -> list[str]:
    """The ``[family]`` section's lines, read back by ``parse_family`` to the same axes."""
    lines = ["\n[family]"]
    for axis in axes:
        options = ", ".join(
            "{" + ", ".join(f"{toml_value(k)} = {v}" for k, v in option) + "}" for option in axis.options
        )
        lines.append(f"{toml_value(axis.name)} = [{options}]")
    return lines
