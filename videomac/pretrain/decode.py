"""Decoding for the frame-pair loader: only what a crop needs, in uint8.

- JPEG frames: the crop box is drawn from the header's size, then the JPEG is decoded at the smallest
  libjpeg DCT scale (1/8, 1/4, 1/2 or 1; libjpeg-turbo through simplejpeg, straight into a numpy array,
  the same pixels as PIL's :meth:`~PIL.Image.Image.draft` decode, faster) at which the crop is still
  at least the output size, so the last step is always a downscale; the crop's edges are rounded to the
  decoded pixel grid and it is resized in uint8 by torch's antialiased bicubic (PIL's filter, within
  2 levels of it). ``exact=True`` (full scale) is the authors' ``resized_crop`` bit for bit (PIL crop,
  then PIL bicubic).
- Video files: read by :class:`videomac.frames.FrameReader` (its names are re-exported here), which
  seeks to the keyframe at or before each wanted frame and decodes forward, identifying frames by
  timestamp, so a frame from seeking is the frame a full decode gives.
- JPEG on the training device: :func:`decode_jpeg_crops` decodes file bytes with
  ``torchvision.io.decode_jpeg`` (batched; on CUDA where asked) and crops/resizes there.

Everything here is deterministic given the crop boxes; the random draws live in
:mod:`videomac.pretrain.clips`.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import simplejpeg
import torch
from PIL import Image

from videomac.frames import FrameReader, SeekError, VideoIndex, indexed_frames, probe_video, video_frame_rgb
from videomac.media import image_to_rgb

__all__ = [
    "Crop",
    "FrameReader",
    "ImageFile",
    "SeekError",
    "VideoIndex",
    "crop_box",
    "crop_resize",
    "indexed_frames",
    "probe_video",
    "video_frame_rgb",
    "decode_jpeg_crops",
    "jpeg_crop",
    "reduction",
]

# (top, left, height, width) in full-resolution pixels, and whether to flip horizontally
Crop = Tuple[int, int, int, int]


def reduction(crop: Crop, out_hw: Tuple[int, int], factors: Sequence[int] = (8, 4, 2, 1)) -> int:
    """The largest factor ``d`` in ``factors`` such that the crop, downscaled ``d`` times, still covers
    the output size in both directions (so the final resize never upsamples beyond what full resolution
    would)."""
    _, _, h, w = crop
    for d in factors:
        if w / d >= out_hw[1] and h / d >= out_hw[0]:
            return d
    return 1


def crop_box(crop: Crop, full_hw: Tuple[int, int], reduced_hw: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """The crop as a PIL box ``(x0, y0, x1, y1)`` in the coordinates of an image downscaled from
    ``full_hw`` to ``reduced_hw``."""
    i, j, h, w = crop
    sy, sx = reduced_hw[0] / full_hw[0], reduced_hw[1] / full_hw[1]
    return j * sx, i * sy, (j + w) * sx, (i + h) * sy


def crop_resize(
    img: Image.Image | np.ndarray,
    box: Tuple[float, float, float, float],
    out_hw: Tuple[int, int],
    flip: bool,
    exact: bool = False,
) -> np.ndarray:
    """Crop ``box`` out of ``img`` (PIL image or ``(H, W, 3)`` uint8 array), resize it bicubically to
    ``out_hw`` and flip it if asked; returns uint8 ``(h, w, 3)``.

    Default: the box's edges are rounded to ``img``'s pixel grid (at most half a pixel of ``img`` each)
    and the crop is resized with torch's antialiased uint8 bicubic, PIL's filter (at most 2 levels from
    PIL's result, under 0.1 on average; ~4x faster). ``exact=True``: PIL ``crop`` + ``resize``, with
    PIL's ``box`` for a fractional box; with an integer box this is the authors' op bit for bit.
    """
    if exact:
        return _pil_crop_resize(img, box, out_hw, flip)
    a = img if isinstance(img, np.ndarray) else np.asarray(img)
    H, W = a.shape[:2]
    x0, y0, x1, y1 = (int(math.floor(v + 0.5)) for v in box)
    x0, y0 = min(max(0, x0), W - 1), min(max(0, y0), H - 1)
    x1, y1 = max(x0 + 1, min(W, x1)), max(y0 + 1, min(H, y1))
    with warnings.catch_warnings():  # PIL's arrays are read-only; the resize only reads them
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(a[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0)  # channels-last view, no copy
    if (y1 - y0, x1 - x0) != tuple(out_hw):
        # torch's uint8 antialiased bicubic is PIL's (a = -0.5, support scaled on downscale)
        x = torch.nn.functional.interpolate(x, size=tuple(out_hw), mode="bicubic", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x[0].permute(1, 2, 0).numpy()


def _pil_crop_resize(
    img: Image.Image | np.ndarray, box: Tuple[float, float, float, float], out_hw: Tuple[int, int], flip: bool
) -> np.ndarray:
    x0, y0, x1, y1 = box
    if isinstance(img, np.ndarray):
        H, W = img.shape[:2]
    else:
        W, H = img.size
    ix0, iy0 = max(0, int(math.floor(x0 + 1e-6))), max(0, int(math.floor(y0 + 1e-6)))
    ix1, iy1 = min(W, int(math.ceil(x1 - 1e-6))), min(H, int(math.ceil(y1 - 1e-6)))
    ix1, iy1 = max(ix1, ix0 + 1), max(iy1, iy0 + 1)
    if isinstance(img, np.ndarray):
        piece = Image.fromarray(np.ascontiguousarray(img[iy0:iy1, ix0:ix1]))
    else:
        piece = img.crop((ix0, iy0, ix1, iy1))
    rbox = (max(0.0, x0 - ix0), max(0.0, y0 - iy0), min(ix1 - ix0, x1 - ix0), min(iy1 - iy0, y1 - iy0))
    out_wh = (out_hw[1], out_hw[0])
    exact = rbox == (0, 0, ix1 - ix0, iy1 - iy0)
    if piece.size == out_wh and exact:
        r = piece
    else:
        r = piece.resize(out_wh, Image.BICUBIC, box=None if exact else rbox)
    if flip:
        r = r.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(r)


@dataclass
class ImageFile:
    """An image file read into memory, its size from the header, not yet decoded.

    ``jpeg``: a JPEG that libjpeg-turbo decodes (through simplejpeg) straight into a numpy array, at any
    DCT scale; other images (PNG, CMYK JPEGs, ...) are decoded by PIL in full."""

    data: bytes
    hw: Tuple[int, int]
    jpeg: bool

    @classmethod
    def read(cls, path: str) -> ImageFile:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageFile:
        try:
            h, w, space, _ = simplejpeg.decode_jpeg_header(data)
            if space in ("YCbCr", "Gray", "RGB"):
                return cls(data, (int(h), int(w)), True)
        except ValueError:  # not a JPEG (or one libjpeg-turbo rejects): PIL decides below
            pass
        with Image.open(io.BytesIO(data)) as im:
            return cls(data, (im.height, im.width), False)

    def decode(self, factor: int = 1) -> np.ndarray:
        """uint8 RGB ``(h, w, 3)``: a JPEG at DCT scale ``1/factor`` (``ceil(H / factor)`` rows, as libjpeg
        scales), other images in full (16-bit ones scaled to 8 bits)."""
        if self.jpeg:
            H, W = self.hw
            try:
                return simplejpeg.decode_jpeg(
                    self.data, "RGB", min_height=-(-H // factor), min_width=-(-W // factor), strict=True
                )
            except ValueError:  # libjpeg warned (extraneous bytes, truncation): PIL's lenience decides, in full
                pass
        with Image.open(io.BytesIO(self.data)) as im:
            return image_to_rgb(im)


def jpeg_crop(
    img: ImageFile, crop: Crop, out_hw: Tuple[int, int], flip: bool, reduce: bool = True, factor: Optional[int] = None
) -> np.ndarray:
    """Decode ``img`` just enough for ``crop``, then crop, resize and flip.

    JPEGs are decoded at the DCT scale ``1/factor`` (default :func:`reduction`); other formats in full.
    ``reduce=False``: full scale and PIL's resize, exactly the authors' op (see :func:`crop_resize`).
    """
    d = (factor if factor is not None else reduction(crop, out_hw)) if reduce and img.jpeg else 1
    a = img.decode(d)
    return crop_resize(a, crop_box(crop, img.hw, a.shape[:2]), out_hw, flip, exact=not reduce)


# ------------------------------------------------------------------------------ JPEG on the device
def decode_jpeg_crops(
    data: Sequence[torch.Tensor],
    crops: Sequence[Crop],
    flips: Sequence[bool],
    out_hw: Tuple[int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Decode JPEG file bytes (uint8 1-D CPU tensors) on ``device`` with ``torchvision.io.decode_jpeg``
    (one batched call), crop each image, resize it bicubically (antialiased, PIL's filter) and flip it
    where asked; returns uint8 ``(N, 3, h, w)`` on ``device``."""
    try:
        with warnings.catch_warnings():  # torchvision >= 0.29 points to TorchCodec; decode_jpeg still works
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:  # pragma: no cover - torchvision is optional
        raise ImportError("decoding JPEGs on the device needs torchvision (pip install torchvision)") from e
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        imgs = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    if isinstance(imgs, torch.Tensor):
        imgs = [imgs]
    out = torch.empty((len(imgs), 3, out_hw[0], out_hw[1]), dtype=torch.uint8, device=device)
    for n, (img, (i, j, h, w), flip) in enumerate(zip(imgs, crops, flips)):
        x = img[:, i : i + h, j : j + w].unsqueeze(0)
        if (h, w) != tuple(out_hw):
            x = torch.nn.functional.interpolate(
                x.float(), size=out_hw, mode="bicubic", align_corners=False, antialias=True
            )
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        if flip:
            x = x.flip(-1)
        out[n] = x[0]
    return out
