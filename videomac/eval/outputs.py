"""Where evaluation, propagation and export may write: the one rule of :mod:`videomac.outputs` (never
over their own inputs, symlinks resolved, never into a run), and what a dataset folder is.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from videomac.outputs import OutputError, check_outputs

__all__ = ["OutputFolderError", "check_output_folder", "dataset_marker"]

# Folders whose presence marks a benchmark dataset root (DAVIS, VIP, JHMDB as distributed).
DATASET_MARKERS = ("Annotations", "JPEGImages", "ImageSets", "Category_ids", "Rename_Images", "joint_positions")

OutputFolderError = OutputError  # the name this module used before the rule moved down


def check_output_folder(out: str, protected: Iterable[Optional[str]], flag: str = "--out") -> str:
    """Return ``out`` if writing under it cannot touch any ``protected`` path or a run; otherwise raise
    :class:`~videomac.outputs.OutputError` naming the flag, the folder and what it overlaps."""
    check_outputs(protected, folders={flag: out})
    return out


def dataset_marker(folder: str) -> Optional[str]:
    """The dataset folder ``folder`` is or lies in (a folder holding ``Annotations/``, ``JPEGImages/``, ...),
    or None."""
    d = os.path.realpath(os.path.abspath(folder))
    while True:
        if any(os.path.isdir(os.path.join(d, m)) for m in DATASET_MARKERS):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
