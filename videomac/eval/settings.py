"""The settings of ``eval`` and ``propagate``, declared once (:mod:`videomac.settings`): the propagation
protocol's (:class:`PropagationConfig`) and the per-run ones (:class:`RunSettings`). Each is range-checked
before any file or model is read, with one ``ValueError`` naming the flag, and makes the commands' options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from videomac.settings import check, check_values, flag, from_args, setting

__all__ = ["PropagationConfig", "RunSettings", "check_settings", "flag", "resolve_device"]


@dataclass(frozen=True)
class RunSettings:
    """Per-run settings of eval/propagate: their ranges and help (None: the command's own default)."""

    batch_size: Optional[int] = setting(None, ge=1, le=4096, help="frames per encoder forward")
    overlay_frames: Optional[int] = setting(None, ge=0, le=10_000, help="frames per overlay contact sheet (0: none)")
    max_frames: Optional[int] = setting(None, ge=1, help="stop after this many frames")
    stride: Optional[int] = setting(
        None, ge=1, le=64, help="output stride of the features (none: the model's, 8 for the paper's backbones)"
    )
    alpha: Optional[float] = setting(None, ge=0, le=1, help="mask opacity in the overlay")
    size: Optional[int] = setting(None, ge=32, le=8192, help="square input size")
    tile: Optional[int] = setting(None, ge=1, le=256, help="query tile of the propagation, in feature cells")
    max_chunk_mb: Optional[float] = setting(None, gt=0, help="bound of the propagation's working memory, in MiB")


def check_settings(**values) -> None:
    """Check every given (not None) run setting against :class:`RunSettings`; other names pass."""
    check_values(RunSettings, **values)


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


@dataclass(frozen=True)
class PropagationConfig:
    """CRW's label-propagation hyper-parameters (``--videoLen 20 --radius 12 --topk 10 --temperature 0.05``).

    The one definition of their defaults and ranges: ``videomac eval`` and ``videomac propagate`` build
    their options from these fields (:func:`~videomac.settings.add_options`). An out-of-range value is a
    ``ValueError`` naming the flag (the radius is capped because the search window grows with its square)."""

    n_context: int = setting(20, ge=0, le=200, help="previous frames used as context")
    radius: float = setting(12.0, gt=0, le=64, help="spatial search radius around each position, in feature cells")
    topk: int = setting(10, ge=1, le=1000, help="context positions averaged per query")
    temperature: float = setting(0.05, gt=0, le=100, help="softmax temperature of the top-k affinities")
    restrict_first: bool = setting(
        False, help="apply the spatial radius to the first frame too (CRW searches it globally)"
    )

    def __post_init__(self):
        check(self)

    @classmethod
    def from_args(cls, args) -> PropagationConfig:
        """The config of parsed options (an ``argparse.Namespace``)."""
        return cls(**from_args(cls, args))
