"""Media conventions shared by pretraining, evaluation and propagation: which files are frames and which
are videos, the order of a folder's frames, and how any image becomes 8-bit RGB.

One definition of each, so a file means the same thing to ``videomac pretrain``, ``prepare``, ``eval`` and
``propagate`` (a ``.m4v`` is a video everywhere; a 16-bit PNG is scaled to 8 bits everywhere, never clipped).
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTS",
    "JPEG_EXTS",
    "VIDEO_EXTS",
    "image_to_rgb",
    "is_image",
    "is_video",
    "frame_names",
    "list_frames",
    "natural_key",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JPEG_EXTS = (".jpg", ".jpeg")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".ogv")


def is_video(path: str) -> bool:
    """Whether ``path`` names a video file by its extension (case-insensitive)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTS)


def is_image(path: str) -> bool:
    """Whether ``path`` names a frame image by its extension (case-insensitive)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTS)


def natural_key(s: str) -> list:
    """Sort key that orders digit runs by value: ``2.jpg`` before ``10.jpg`` (zero-padded names keep the
    plain sorted order)."""
    # re.split with a group alternates text and digit runs, so keys compare str with str and int with int
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def frame_names(folder: str, exts: Sequence[str] = IMAGE_EXTS) -> List[str]:
    """Names of the frame images (``exts``) in ``folder`` (not recursive), in natural order.

    A frame's index is its name without the extension, so two files with one index (``00001.jpg`` and
    ``00001.png``) are refused with a ``ValueError`` naming them: both would be "frame 00001" (one
    output mask for two frames, or one frame read twice)."""
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(tuple(exts))), key=natural_key)
    by_index: Dict[str, List[str]] = {}
    for n in names:
        by_index.setdefault(os.path.splitext(n)[0], []).append(n)
    clashes = [group for group in by_index.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(", ".join(group) for group in clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise ValueError(
            f"{folder}: {len(clashes)} frame index(es) held by more than one file ({shown}); keep one file per frame"
        )
    return names


def list_frames(folder: str, exts: Sequence[str] = IMAGE_EXTS) -> List[str]:
    """Paths of the frame images in ``folder`` (:func:`frame_names`: natural order, one file per index)."""
    return [os.path.join(folder, n) for n in frame_names(folder, exts)]


def image_to_rgb(im: Image.Image, path: str = "image") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a PIL image.

    16-bit images (``I;16*``, and ``I`` within 0..65535) are scaled to 8 bits with rounding
    (``convert('RGB')`` would clip them: almost every pixel white); 32-bit integer images outside
    0..65535 and floating-point images are refused with a ``ValueError`` naming ``path``.
    """
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{path}: 32-bit integer image with values outside 0..65535; expected 8- or 16-bit")
        return np.repeat(((a * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        raise ValueError(f"{path}: floating-point image (mode F); expected 8- or 16-bit frames")
    return np.asarray(im.convert("RGB"))
