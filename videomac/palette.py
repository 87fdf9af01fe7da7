"""The PASCAL VOC / DAVIS colour map used for indexed label PNGs."""

from __future__ import annotations

import numpy as np

__all__ = ["davis_palette"]


def davis_palette() -> np.ndarray:
    """The 256-entry PASCAL VOC / DAVIS colour map, ``(256, 3)`` uint8 (0 black, 1 dark red, ...)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal
