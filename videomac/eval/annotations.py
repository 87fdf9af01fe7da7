"""One reader for every mask and annotation that eval and propagate take in (DAVIS, VIP, the
``propagate --mask``, result masks scored by ``evaluate``).

The rules, the same everywhere:

* the file must really be a PNG (its format is read from its bytes, not its name): a JPEG saved as
  ``mask.png`` turns every edge into dozens of extra "objects", and any lossy format invents labels;
* the PNG must be indexed (palette, mode ``P``), 8-bit grayscale (``L``) or 1-bit (``1``): pixel
  values are the labels; colour (RGB/RGBA) and 16-bit PNGs are refused, saying how to convert;
* an annotation must have exactly its frame's size (no resize rule: a transposed or cropped
  annotation is refused, :func:`check_annotation_size`).

Errors are :class:`AnnotationError` (a ``ValueError``) naming the file, what was found and what to do.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["AnnotationError", "read_annotation", "read_mask", "check_annotation_size", "LABEL_MODES"]

LABEL_MODES = ("P", "L", "1")
_CONVERT = (
    "save it as an indexed (palette) or 8-bit grayscale PNG whose pixel values are the object ids, "
    "e.g. with videomac.synthetic.write_palette_png"
)


class AnnotationError(ValueError):
    """A mask or annotation that is not a lossless label PNG of the right size."""


def read_annotation(path: str, what: str = "annotation") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(H, W)`` uint8 labels and the ``(256, 3)`` palette (None unless indexed) of a label PNG, read
    under the module's rules; ``what`` names the file's role in messages (``mask``, ``result``, ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            fmt, mode = im.format, im.mode
            if fmt != "PNG":
                raise AnnotationError(
                    f"{what} {path} is a {fmt or 'non-PNG'} file, not a PNG (whatever its name): lossy formats "
                    f"invent labels at every edge; {_CONVERT}"
                )
            if mode not in LABEL_MODES:
                kind = "a colour" if mode.startswith(("RGB", "LA", "CMYK")) else "a 16-bit or other"
                raise AnnotationError(f"{what} {path} is {kind} PNG (mode {mode}), not a label PNG; {_CONVERT}")
            lab = np.array(im, dtype=np.uint8)  # mode '1' arrays are bool: 0/1 labels
            pal = im.getpalette() if mode == "P" else None
    except OSError as e:  # PIL: unidentified or truncated file
        raise AnnotationError(f"cannot read {what} {path} ({type(e).__name__}: {e}); {_CONVERT}") from e
    if pal is not None:
        pal = np.asarray(pal[: 256 * 3], dtype=np.uint8)
        pal = np.pad(pal, (0, 768 - pal.size)).reshape(256, 3)
    return lab, pal


def read_mask(path: str) -> np.ndarray:
    """A ``propagate`` first-frame mask as ``(H, W)`` uint8 object ids (0 = background).

    Pixel values are object ids on background 0, so a mask must hold 0 (one without is refused:
    tracking would follow the background as an object). Indexed PNGs keep their indices; 255 (DAVIS
    "void") becomes background. A grayscale or 1-bit mask with exactly two values, 0 and another, is
    binary: one object, id 1 (``{0, 255}`` is object 1, not void)."""
    lab, pal = read_annotation(path, "mask")
    values = np.unique(lab)
    if values.size and values[0] != 0:
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise AnnotationError(
            f"mask {path} has no background: its values are {shown} and none is 0; object ids are 1..N on "
            "background 0 (a binary mask: 0 and one other value)"
        )
    if pal is None and values.size == 2:
        lab = (lab > 0).astype(np.uint8)
    lab[lab == 255] = 0
    return lab


def check_annotation_size(what: str, shape: Sequence[int], frame_hw: Sequence[int], frame: str) -> None:
    """Refuse an annotation (``what``: its role and path) of ``shape`` (H, W) that is not the size
    ``frame_hw`` (H, W) of its ``frame`` (a description for the message)."""
    (h, w), (H, W) = tuple(shape[:2]), tuple(frame_hw[:2])
    if (h, w) != (H, W):
        how = "transposed" if (h, w) == (W, H) else ("cropped" if h <= H and w <= W else "of another size")
        raise AnnotationError(
            f"{what} is {w}x{h} (WxH) but {frame} is {W}x{H} (it looks {how}); annotations must have their "
            "frame's exact size"
        )
