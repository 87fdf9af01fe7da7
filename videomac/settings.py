"""Settings declared once, on dataclass fields: type, default, range, choices and help.

A settings class (``PretrainConfig``, ``PropagationConfig``, ...) declares each field with :func:`setting`.
:func:`check` refuses a value outside its declaration with one ``ValueError`` naming the flag, and
:func:`add_options` turns the fields into argparse options whose help shows the default once. Torch-free,
so ``--help`` and a bad value answer before torch loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import operator
import typing
from functools import cache
from typing import Callable, Dict, Iterable, Optional, Tuple

__all__ = ["setting", "flag", "check", "check_values", "choices", "describe", "add_options", "from_args"]

_BOUNDS = dict(
    ge=("at least", operator.ge),
    gt=("above", operator.gt),
    le=("at most", operator.le),
    lt=("below", operator.lt),
)


def setting(
    default=None,
    *,
    help: str = "",
    ge=None,
    gt=None,
    le=None,
    lt=None,
    choices: Optional[Iterable] = None,
    group: Optional[str] = None,
    cli: bool = True,
):
    """A dataclass field with its valid values (``ge``/``gt``/``le``/``lt`` bounds, ``choices``) and its
    command-line ``help``; ``group``: the help section of its option; ``cli=False``: no option."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    rule = dict(help=help, bounds=bounds, choices=tuple(choices) if choices else None, group=group, cli=cli)
    return dataclasses.field(default=default, metadata=rule)


def flag(name: str) -> str:
    """The command-line flag of a setting: ``n_context`` -> ``--n-context``."""
    return "--" + name.replace("_", "-")


@cache
def _fields(cls) -> Dict[str, Tuple[dataclasses.Field, type, bool]]:
    """name -> (field, type, optional) of a settings class (string annotations resolved once)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind, args = hints[f.name], typing.get_args(hints[f.name])
        optional = typing.get_origin(kind) is typing.Union and type(None) in args
        out[f.name] = (f, next(a for a in args if a is not type(None)) if optional else kind, optional)
    return out


def _rule(f: dataclasses.Field) -> Dict:
    return {"help": "", "bounds": {}, "choices": None, "group": None, "cli": True, **f.metadata}


def choices(cls, name: str) -> Tuple:
    """The values ``cls``'s setting ``name`` may take."""
    return _rule(_fields(cls)[name][0])["choices"]


def describe(cls, name: str) -> str:
    """``cls``'s declared range of ``name`` in words (``at least 0 and at most 200``); empty if unbounded."""
    bounds = _rule(_fields(cls)[name][0])["bounds"]
    return " and ".join(f"{_BOUNDS[k][0]} {v}" for k, v in bounds.items())


def _check(cls, name: str, value) -> None:
    f, kind, optional = _fields(cls)[name]
    rule, option = _rule(f), flag(name)
    if value is None:
        if optional:
            return
        raise ValueError(f"{option} must be set (got none)")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
            raise ValueError(f"{option} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
    elif kind in (str, bool) and not isinstance(value, kind):
        raise ValueError(f"{option} must be a {kind.__name__}, got {value!r}")
    for key, bound in rule["bounds"].items():
        words, ok = _BOUNDS[key]
        if not ok(value, bound):
            raise ValueError(f"{option} must be {words} {bound}, got {value}")
    if rule["choices"] and value not in rule["choices"]:
        raise ValueError(f"{option} must be one of {', '.join(map(str, rule['choices']))}, got {value!r}")


def check(settings) -> None:
    """Every field of the dataclass instance ``settings`` against its declaration."""
    for name in _fields(type(settings)):
        _check(type(settings), name, getattr(settings, name))


def check_values(cls, **values) -> None:
    """The given (not None) ``values`` of ``cls``'s settings against their declarations; other names pass."""
    for name, value in values.items():
        if value is not None and name in _fields(cls):
            _check(cls, name, value)


def _shown(value) -> str:
    return "none" if value is None else str(value)


def add_options(
    parser,
    cls,
    names: Optional[Iterable[str]] = None,
    *,
    skip: Iterable[str] = (),
    defaults: Optional[Dict] = None,
    unset: bool = False,
    note: Optional[Callable[[str], str]] = None,
) -> None:
    """An option per setting of ``cls`` (``names``, in that order; default: every field with ``cli``, less
    ``skip``), in the argument group its setting names. The help shows the default once, then ``note(name)``
    and the range. ``defaults``: this command's own default of a setting. ``unset``: options default
    to None, so a value given can be told apart from a preset's (the help still shows the real default)."""
    table, defaults, groups = _fields(cls), defaults or {}, {}
    names = [n for n, (f, _, _) in table.items() if _rule(f)["cli"]] if names is None else list(names)
    for name in (n for n in names if n not in set(skip)):
        f, kind, _ = table[name]
        rule = _rule(f)
        default = defaults.get(name, f.default)
        off_switch = kind is bool and default is False and not unset  # a plain switch: its default goes unsaid
        said = "" if off_switch else f"default: {_shown(default)}"
        said = "; ".join(s for s in (said, note(name) if note else "", describe(cls, name)) if s)
        text = f"{rule['help']} ({said})" if rule["help"] and said else rule["help"] or said
        kwargs = dict(default=None if unset else default, help=text)
        if off_switch:
            kwargs["action"] = "store_true"
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, choices=rule["choices"])
        if rule["group"] and rule["group"] not in groups:
            groups[rule["group"]] = parser.add_argument_group(rule["group"])
        groups.get(rule["group"], parser).add_argument(flag(name), **kwargs)


def from_args(cls, args: argparse.Namespace) -> Dict:
    """The values of ``cls``'s settings among parsed arguments."""
    return {name: getattr(args, name) for name in _fields(cls) if hasattr(args, name)}
