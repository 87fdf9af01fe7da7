"""Ranges of the numeric settings of ``eval`` and ``propagate``, checked once, in one place.

Each setting is a :class:`Range`; :func:`check_settings` refuses a value outside it (NaN, inf, a
float where an integer is needed, a bool) with one ``ValueError`` naming the flag, the value and the
range. The propagation protocol's own settings carry their range in
:class:`~videomac.eval.propagation.PropagationConfig`'s field metadata; the run settings are in
:data:`RUN_SETTINGS`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

__all__ = ["PropagationConfig", "Range", "RUN_SETTINGS", "check_number", "check_settings", "flag", "resolve_device"]


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``lo_open``: ``lo < value``); None is unbounded; ``integer``: whole numbers."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    integer: bool = False
    lo_open: bool = False
    unit: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"<= {self.hi:g}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{kind} {' and '.join(x for x in (lo, hi) if x)}{unit}".rstrip()


# Per-run settings of eval/propagate (None = the option's own default; validated when given).
RUN_SETTINGS: Dict[str, Range] = {
    "batch_size": Range(1, 4096, integer=True, unit="frames"),
    "overlay_frames": Range(0, 10_000, integer=True, unit="frames"),
    "max_frames": Range(1, None, integer=True, unit="frames"),
    "stride": Range(1, 64, integer=True, unit="pixels"),
    "alpha": Range(0, 1),
    "size": Range(32, 8192, integer=True, unit="pixels"),
    "tile": Range(1, 256, integer=True, unit="feature cells"),
    "max_chunk_mb": Range(0, None, lo_open=True, unit="MiB"),
}


def flag(name: str) -> str:
    """The command-line flag of a setting: ``n_context`` -> ``--n-context``."""
    return "--" + name.replace("_", "-")


def check_number(name: str, value, rng: Range):
    """``value`` if it lies in ``rng``; otherwise ``ValueError`` naming :func:`flag` ``(name)``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not rng.integer or float(value).is_integer())
    if ok and rng.lo is not None:
        ok = value > rng.lo if rng.lo_open else value >= rng.lo
    if ok and rng.hi is not None:
        ok = value <= rng.hi
    if not ok:
        raise ValueError(f"{flag(name)} {value!r} is out of range: expected {rng.describe()}")
    return value


def check_settings(ranges: Optional[Dict[str, Range]] = None, **values) -> None:
    """Check every given (not None) setting against its range (default :data:`RUN_SETTINGS`)."""
    ranges = RUN_SETTINGS if ranges is None else ranges
    for name, value in values.items():
        if value is not None and name in ranges:
            check_number(name, value, ranges[name])


def resolve_device(device: Optional[str]) -> str:
    """``--device``: None -> CUDA when available, else CPU; an unknown or unavailable device is a ``ValueError``."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"--device {device!r} is not a device ({str(e).splitlines()[0][:80]}...); use cpu, cuda or cuda:N"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available")
    return device


def _setting(default, rng: Range, help: str):
    return field(default=default, metadata=dict(range=rng, help=help))


@dataclass(frozen=True)
class PropagationConfig:
    """CRW's label-propagation hyper-parameters (``--videoLen 20 --radius 12 --topk 10 --temperature 0.05``).

    The one definition of their defaults and ranges: ``videomac eval`` and ``videomac propagate`` build
    their options from these fields (:meth:`options`). An out-of-range value is a ``ValueError`` naming
    the flag (the radius is capped because the search window grows with its square)."""

    n_context: int = _setting(20, Range(0, 200, integer=True, unit="frames"), "previous frames used as context")
    radius: float = _setting(
        12.0,
        Range(0, 64, lo_open=True, unit="feature cells"),
        "spatial search radius around each position, in feature cells",
    )
    topk: int = _setting(10, Range(1, 1000, integer=True), "context positions averaged per query")
    temperature: float = _setting(0.05, Range(0, 100, lo_open=True), "softmax temperature of the top-k affinities")
    restrict_first: bool = field(
        default=False, metadata=dict(help="apply the spatial radius to the first frame too (CRW searches it globally)")
    )

    def __post_init__(self):
        for f in fields(self):
            if "range" in f.metadata:
                check_number(f.name, getattr(self, f.name), f.metadata["range"])

    @classmethod
    def options(cls) -> List[Tuple[str, Dict]]:
        """``(flag, argparse keyword arguments)`` for each field, defaults and help from the fields."""
        out = []
        for f in fields(cls):
            if f.type in (bool, "bool"):
                out.append((flag(f.name), dict(action="store_true", help=f.metadata["help"])))
                continue
            kind = int if f.metadata["range"].integer else float
            out.append(
                (
                    flag(f.name),
                    dict(
                        type=kind,
                        default=f.default,
                        help=f"{f.metadata['help']} (default {f.default:g}; {f.metadata['range'].describe()})",
                    ),
                )
            )
        return out

    @classmethod
    def from_args(cls, args) -> PropagationConfig:
        """The config of parsed :meth:`options` (an ``argparse.Namespace``)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
