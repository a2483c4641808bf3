"""Command-line flags derived from option dataclasses, so that every option is written down once.

An options dataclass (``TrainConfig``, ``ExportOptions``) owns each option's name, type, default and
help text; :func:`option` stores the help text (and the rare CLI-only detail: another flag name, a
parser for list values, an environment variable as the CLI default) in the field's metadata.
:func:`add_options` turns the fields into argparse flags and :func:`options_from_args` turns the parsed
namespace back into the dataclass, whole. A new option is one new field: the CLI, ``--help`` and the
JSON written into run/export folders follow from it.

Standard library only: ``aa-deploy --help`` builds every subcommand's flags without importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    env: str | None = None,
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``flag`` replaces the default ``--field-name``; ``parse`` converts the flag's text (default: the
    field's type); ``env`` names an environment variable whose value is the flag's default (the
    dataclass default stays as is, so library callers are not affected by the environment);
    ``choices`` limits the values (``Literal`` types supply them on their own).
    """
    metadata = {"help": help, "flag": flag, "parse": parse, "env": env, "metavar": metavar, "choices": choices}
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
    """The flag a field gets: ``--field-name``, ``--no-field-name`` for a switch that is on by default."""
    explicit = field.metadata.get("flag")
    if explicit:
        return explicit
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def _scalar_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(the converter, the allowed values) of a field type such as ``int | None`` or ``Literal["A", "B"]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _scalar_type(members[0])
        raise TypeError(f"cannot derive a flag from the union type {annotation}: pass parse= to option()")
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return type(values[0]), values
    if annotation in (int, float, str):
        return annotation, None
    raise TypeError(f"cannot derive a flag from the type {annotation}: pass parse= to option()")


def _default_text(value: Any) -> str | None:
    if value is None or value is _MISSING or isinstance(value, bool):
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


# The environment variable that names the GLUE folder (default of --data-dir; tests and benchmarks too).
GLUE_DIR_ENV = "AA_GLUE_DIR"


def env_value(name: str) -> str | None:
    """An environment variable's value, None when it is unset or empty (a Makefile or CI step may
    export a variable empty: that must not count as an explicit, empty setting)."""
    return os.environ.get(name) or None


def glue_dir_from_env() -> str | None:
    """``$AA_GLUE_DIR`` by :func:`env_value`'s rule."""
    return env_value(GLUE_DIR_ENV)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls``; ``--help`` shows each default."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text: declare it with option(...)")
        flag = flag_of(field)
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        if hints[field.name] is bool:
            kwargs["action"] = "store_false" if field.default is True else "store_true"
            kwargs["default"] = bool(field.default)
            parser.add_argument(flag, **kwargs)
            continue
        convert, choices = (meta["parse"], None) if meta["parse"] else _scalar_type(hints[field.name])
        kwargs["type"] = convert
        if meta["choices"] or choices:
            kwargs["choices"] = list(meta["choices"] or choices)
        if meta["metavar"] or not kwargs.get("choices"):
            kwargs["metavar"] = meta["metavar"] or flag.removeprefix("--").replace("-", "_").upper()
        if field.default is _MISSING and field.default_factory is _MISSING:
            kwargs["required"] = True
        else:
            default = field.default if field.default_factory is _MISSING else field.default_factory()
            env = meta["env"]
            if env:
                kwargs["help"] += f" (default: ${env})"
                default = env_value(env) or default
            elif (text := _default_text(default)) is not None:
                kwargs["help"] += f" (default: {text})"
            kwargs["default"] = default
        parser.add_argument(flag, **kwargs)


def options_from_args(cls: type[_T], args: argparse.Namespace) -> _T:
    """The dataclass ``cls`` built from the parsed flags added by :func:`add_options` (other keys ignored)."""
    values = vars(args)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})  # type: ignore[call-arg]


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv`` (also when the value typed equals the default).

    ``parser`` must be a fresh parser of the same shape as the one that parsed ``argv``: its defaults
    (and its subcommands' defaults) are replaced by "absent", so that argparse itself, with its prefix
    matching and ``--flag=value`` forms, tells which options were given.
    """
    for each in _parsers_within(parser):
        for action in each._actions:
            if action.dest not in ("help", "command"):
                action.default = argparse.SUPPRESS
        each._defaults.clear()
    namespace, _ = parser.parse_known_args(argv)
    return {name for name in vars(namespace) if name != "command"}


def _parsers_within(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found.extend(_parsers_within(sub))
    return found


@dataclass(frozen=True)
class FlagRules:
    """Flag combinations a subcommand refuses, judged on the flags the user typed (not on defaults).

    A subcommand attaches its rules with ``parser.set_defaults(flag_rules=FlagRules(...))`` next to the
    flags themselves; :func:`flag_rule_problems` applies them. ``exclusive``: two flags that must not be
    given together (one would silently win). ``requires``: a flag that means nothing without another.
    """

    exclusive: tuple[tuple[str, str, str], ...] = ()  # (dest, dest, why)
    requires: tuple[tuple[str, str], ...] = ()  # (dest, the dest it needs)


def flag_rule_problems(rules: FlagRules, given: set[str], parser: argparse.ArgumentParser) -> list[str]:
    """One message per broken rule; flags are named as the user types them."""
    names = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    problems = []
    for first, second, why in rules.exclusive:
        if first in given and second in given:
            problems.append(f"{names[first]} and {names[second]} cannot be used together: {why}")
    for option, needed in rules.requires:
        if option in given and needed not in given:
            problems.append(f"{names[option]} only works with {names[needed]}")
    return problems


def subcommand_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None
