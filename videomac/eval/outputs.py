"""Where evaluation, propagation and export may write: never over their own inputs.

An output folder is refused when it is, lies inside, or contains a protected input (a dataset root,
its annotation or frame folders, a video, a mask): paths are compared after resolving symlinks, so a
link cannot smuggle the ground truth under ``--out``. A run folder (one a pretraining run owns) and a
dataset are refused as export/push destinations.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

__all__ = ["OutputFolderError", "check_output_folder", "dataset_marker"]

# Folders whose presence marks a benchmark dataset root (DAVIS, VIP, JHMDB as distributed).
DATASET_MARKERS = ("Annotations", "JPEGImages", "ImageSets", "Category_ids", "Rename_Images", "joint_positions")


class OutputFolderError(ValueError):
    """An output folder that would overwrite an input or a run (the message names both)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output_folder(out: str, protected: Iterable[Optional[str]], flag: str = "--out") -> str:
    """Return ``out`` if writing under it cannot touch any ``protected`` path; otherwise raise
    :class:`OutputFolderError` naming the flag, the folder and the input it overlaps."""
    o = _real(out)
    for p in protected:
        if not p:
            continue
        r = _real(p)
        if _within(o, r) or _within(r, o):
            how = "is" if o == r else ("is inside" if _within(o, r) else "contains")
            via = f" (which resolves to {r})" if r != os.path.abspath(p) else ""
            raise OutputFolderError(
                f"{flag} {out} {how} the input {p}{via}; writing there could overwrite it: "
                "choose an output folder outside the inputs"
            )
    return out


def dataset_marker(folder: str) -> Optional[str]:
    """The dataset folder ``folder`` is or lies in (a folder holding ``Annotations/``, ``JPEGImages/``, ...),
    or None."""
    d = _real(folder)
    while True:
        if any(os.path.isdir(os.path.join(d, m)) for m in DATASET_MARKERS):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
