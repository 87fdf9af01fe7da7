"""Reading frame pairs out of one video: the clips of a :class:`~videomac.pretrain.data.FramePairDataset`.

A clip reads pair ``t`` (frames ``t`` and ``t + gap``) through one path per kind of video, given a
:class:`ReadContext`: the :class:`ReadOptions` (output size, gap, crop and flip ranges, decoding) with
the crop/flip draw, and this process's caches (video indexes, the open units of pairs read in order,
the synthetic videos) and skip log. Clips never see the dataset.

One random-resized crop and one horizontal flip are drawn per pair, on torch's global RNG, and shared by
both frames; they are drawn when a pair is read, so the sample stream does not depend on what a unit
had decoded before.
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from PIL import Image

from videomac.frames import FrameReader, VideoIndex
from videomac.pretrain.decode import ImageFile, crop_box, crop_resize, reduction

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Clip",
    "EncodedPair",
    "FrameFolderClip",
    "ReadContext",
    "ReadOptions",
    "SyntheticClip",
    "VideoFileClip",
    "normalize_frames",
    "random_resized_crop_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_OPEN_UNITS = 16
DEFAULT_MAX_UNIT_PAIRS = 64
_VIDEO_FACTORS = (4, 2, 1)  # video frames: swscale downscales by these (area filter) where the crop allows
_MAX_VIDEO_INDEXES = 64


def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(..., 3, H, W)`` -> float32, ImageNet mean/std normalised, on ``x``'s device.

    The one place where pixels become model inputs: the training loop, figures and benchmarks call it on
    the device, after the (four times smaller) uint8 batch has been copied there. Floating-point input is
    taken as already normalised and returned as float32.
    """
    if x.is_floating_point():
        return x.float()
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(shape)
    return x.float().div_(255.0).sub_(mean).div_(std)


def random_resized_crop_params(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> Tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (``ratio`` is width/height), on torch's global RNG.

    Returns ``(top, left, h, w)``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,)).item())
            j = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass
class EncodedPair:
    """A JPEG frame pair left for the training device to decode (``gpu_decode=True``): the two files'
    bytes (uint8 1-D tensors), the shared crop ``(top, left, h, w)`` in full-resolution pixels, the flip,
    and the output size ``(h, w)``."""

    jpeg1: torch.Tensor
    jpeg2: torch.Tensor
    crop: Tuple[int, int, int, int]
    flip: bool
    size: Tuple[int, int]


@dataclass
class ReadOptions:
    """How pairs are read (see :class:`~videomac.pretrain.data.FramePairDataset` for each setting):
    output size, frame gap, crop ``scale`` / ``ratio`` and flip probability, uint8 or normalised output,
    and decoding (JPEG DCT scaling, JPEG left for the device, units of pairs read in order, PyAV threads,
    video downscaling, the synthetic videos' size). Checked and normalised on construction."""

    input_size: Tuple[int, int] = (224, 224)
    gap: int = 1
    scale: Tuple[float, float] = (0.2, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    normalize: bool = False
    jpeg_draft: bool = True
    gpu_decode: bool = False
    video_units: bool = False
    frame_units: bool = False
    max_unit_pairs: int = DEFAULT_MAX_UNIT_PAIRS
    max_open_units: int = DEFAULT_MAX_OPEN_UNITS
    decode_threads: int = 1
    video_short_side: Optional[int] = None
    synthetic_size: Tuple[int, int] = (192, 256)

    def __post_init__(self) -> None:
        size = (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size
        self.input_size = (int(size[0]), int(size[1]))
        if min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if int(self.gap) < 1:
            raise ValueError(f"gap must be >= 1, got {self.gap}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(self.scale)}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(self.ratio)}")
        if int(self.max_unit_pairs) < 1:
            raise ValueError(f"max_unit_pairs must be >= 1, got {self.max_unit_pairs}")
        self.gap, self.hflip = int(self.gap), float(self.hflip)
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        self.max_unit_pairs, self.max_open_units = int(self.max_unit_pairs), int(self.max_open_units)
        self.decode_threads = int(self.decode_threads)
        self.synthetic_size = (int(self.synthetic_size[0]), int(self.synthetic_size[1]))
        for name in ("normalize", "jpeg_draft", "gpu_decode", "video_units", "frame_units"):
            setattr(self, name, bool(getattr(self, name)))


class _Cursor:
    """An open unit of one clip, read in ascending order: the frames decoded and not yet used by its
    pairs (video: at :meth:`ReadContext.store_hw`, as uint8 arrays; frame folders: ``(factor, uint8
    array, ImageFile)``, decoded at DCT scale ``1/factor``, the file kept for a decode at another scale)
    and, for a video, its open :class:`~videomac.frames.FrameReader`. ``end``: the unit's end pair."""

    def __init__(self, key=None, end: int = 0):
        self.key, self.end = key, end
        self.reader: Optional[FrameReader] = None
        self.frames: Dict[int, object] = {}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.frames.clear()


class ReadContext:
    """What clips read pairs with: the :class:`ReadOptions`, the crop/flip draw and output conversion,
    and this process's state -- the skip log (``skipped``: path -> reason, one warning per path), the
    video indexes (LRU), the open units (LRU, at most ``max_open_units``) and the synthetic frames.
    Pickling (DataLoader workers started by spawn) leaves the caches behind."""

    def __init__(self, options: ReadOptions):
        self.options = options
        self.skipped: Dict[str, str] = {}
        self._warned: Set[str] = set()
        self._clear_caches()

    def _clear_caches(self) -> None:
        self.synthetic: Dict[int, np.ndarray] = {}
        self.indexes: OrderedDict[str, VideoIndex] = OrderedDict()
        self.open_units: OrderedDict[Tuple[int, int], _Cursor] = OrderedDict()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(synthetic={}, indexes=OrderedDict(), open_units=OrderedDict())
        return state

    def warn(self, path: str, reason: str, record: bool = True) -> None:
        """Record ``path`` as skipped (unless ``record=False``) and warn about it once per process."""
        if record:
            self.skipped[path] = reason
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"FramePairDataset: {path}: {reason}", stacklevel=4)

    def draw(self, height: int, width: int) -> Tuple[Tuple[int, int, int, int], bool]:
        """One crop ``(top, left, h, w)`` and flip for a pair of frames ``height x width``."""
        o = self.options
        crop = random_resized_crop_params(height, width, o.scale, o.ratio)
        return crop, bool(torch.rand(1).item() < o.hflip)

    def out(self, a: np.ndarray, b: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = _chw(a), _chw(b)
        if self.options.normalize:
            x, y = normalize_frames(x), normalize_frames(y)
        return x, y

    def crop_pair(self, a: np.ndarray, b: np.ndarray, crop, flip: bool, full_hw, exact: bool = False):
        """Both frames (decoded at any scale of ``full_hw``) cropped, resized and flipped alike."""
        size = self.options.input_size
        return self.out(*(crop_resize(x, crop_box(crop, full_hw, x.shape[:2]), size, flip, exact) for x in (a, b)))

    def array_pair(self, a: np.ndarray, b: np.ndarray):
        """A pair of full frames: crop and flip drawn on ``a``'s size."""
        H, W = a.shape[:2]
        crop, flip = self.draw(H, W)
        return self.crop_pair(a, b, crop, flip, (H, W))

    def video_index(self, path: str) -> VideoIndex:
        """The video's :class:`VideoIndex`, kept for the most recently used videos of this process."""
        idx = self.indexes.get(path)
        if idx is None:
            idx = self.indexes[path] = VideoIndex.read(path)
            while len(self.indexes) > _MAX_VIDEO_INDEXES:
                self.indexes.popitem(last=False)
        else:
            self.indexes.move_to_end(path)
        return idx

    def store_hw(self, clip_hw: Tuple[int, int]) -> Tuple[int, int]:
        """The size video frames are converted to in unit mode: the smallest at which every crop the
        scale / ratio ranges allow still covers the output size (so resizing never upsamples), at most
        full size. About ``out_h * out_w / (scale_min * ratio_min)`` pixels whatever the video's
        resolution (775 x 436 for a 720p video at 224 x 224 with the paper's ranges)."""
        o = self.options
        H, W = clip_hw
        area = H * W * o.scale[0]
        min_h = math.sqrt(area / o.ratio[1])
        min_w = math.sqrt(area * o.ratio[0])
        s = min(1.0, max((o.input_size[0] + 1) / max(1.0, min_h), (o.input_size[1] + 1) / max(1.0, min_w)))
        return max(1, round(H * s)), max(1, round(W * s))

    def cursor(self, clip: Clip, t: int) -> _Cursor:
        """The open cursor of the unit holding pair ``t`` of ``clip`` (opened if needed; the least
        recently used one closed beyond ``max_open_units``)."""
        u, _, end = clip.unit_of(t, self.options.max_unit_pairs)
        key = (id(clip), u)
        cur = self.open_units.get(key)
        if cur is None:
            cur = self.open_units[key] = _Cursor(key, end)
            while len(self.open_units) > self.options.max_open_units:
                self.open_units.popitem(last=False)[1].close()
        else:
            self.open_units.move_to_end(key)
        return cur

    def release(self, cur: _Cursor, t: int) -> None:
        """Pair ``t`` of the cursor's unit is done: drop its first frame, and the unit after its last."""
        for k in [k for k in cur.frames if k <= t]:  # pairs come in ascending t: frame t is done
            del cur.frames[k]
        if t + 1 >= cur.end:
            self.drop(cur)

    def drop(self, cur: _Cursor) -> None:
        cur.close()
        self.open_units.pop(cur.key, None)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _failure(e: Exception) -> str:
    return f"failed to decode ({type(e).__name__}: {str(e)[:80]})"


def short_name(path: str) -> str:
    """A video's name in logs: the last part of its path."""
    return os.path.basename(os.path.normpath(path)) or path


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------- clips
class Clip:
    """One video of a :class:`~videomac.pretrain.data.FramePairDataset`: the protocol pairs are read through.

    ``num_frames`` usable frames; ``num_pairs`` ``(t, t + gap)`` pairs fixed at construction (its share of
    the epoch); ``starts`` the first frames of those pairs when they are not simply ``0..num_pairs-1``;
    ``keyframes`` where decoding units may start. :meth:`read_pair` returns pair ``t`` (``None``: a random
    one) or ``None`` when it cannot; :meth:`lost` says whether every pair from ``t`` on is gone, so the
    dataset skips the rest of the clip at once. State changes (a frame found unreadable, a video shorter
    than counted, ``dead``: nothing of it decodes) belong to the process that found them.
    """

    def __init__(self, name: str, num_frames: int, num_pairs: int, starts: Optional[List[int]] = None):
        self.name = name
        self.num_frames = num_frames
        self.num_pairs = num_pairs
        self.starts = starts
        self.keyframes: List[int] = []
        self.dead = False
        self._bounds: Optional[List[int]] = None

    def read_pair(self, ctx: ReadContext, t: Optional[int]):
        raise NotImplementedError

    def lost(self, end: int) -> bool:
        """Whether no pair ending at frame ``end`` or later can come from this clip any more."""
        return self.dead

    def in_units(self, options: ReadOptions) -> bool:
        """Whether this clip's pairs are grouped into units (served in ascending order by one process)."""
        return False

    def unit_bounds(self, max_pairs: int) -> List[int]:
        """Pair starts where units begin: keyframes, long runs split evenly into at most ``max_pairs``."""
        if self._bounds is None:
            n = self.num_pairs
            keys = sorted({k for k in self.keyframes if 0 < k < n} | {0})
            self._bounds = []
            for a, b in zip(keys, keys[1:] + [n]):
                parts = max(1, math.ceil((b - a) / max_pairs))
                self._bounds += [a + (b - a) * p // parts for p in range(parts)]
        return self._bounds

    def unit_of(self, t: int, max_pairs: int) -> Tuple[int, int, int]:
        """``(unit number, first t, end t)`` of the unit holding pair ``t``."""
        bounds = self.unit_bounds(max_pairs)
        u = bisect.bisect_right(bounds, t) - 1
        return u, bounds[u], bounds[u + 1] if u + 1 < len(bounds) else self.num_pairs

    def by_unit(self, ctx: ReadContext, t: Optional[int]) -> bool:
        """Whether pair ``t`` is read through its unit's cursor (decoded frames kept for the next pair)."""
        return t is not None and ctx.options.video_units and self.in_units(ctx.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, frames={self.num_frames}, pairs={self.num_pairs})"


class SyntheticClip(Clip):
    """A seeded synthetic video (:func:`videomac.synthetic.render_video`), rendered on first use."""

    def __init__(self, seed: int, num_frames: int, gap: int):
        super().__init__(f"synthetic-{seed}", num_frames, num_frames - gap)
        self.seed = seed

    def frames(self, ctx: ReadContext) -> np.ndarray:
        """All frames, ``(T, H, W, 3)`` uint8, cached per process."""
        arr = ctx.synthetic.get(self.seed)
        if arr is None:
            from videomac.synthetic import render_video

            arr = ctx.synthetic[self.seed] = render_video(self.seed, self.num_frames, ctx.options.synthetic_size)[0]
        return arr

    def read_pair(self, ctx: ReadContext, t: Optional[int]):
        arr, g = self.frames(ctx), ctx.options.gap
        if t is None:
            t = int(torch.randint(0, len(arr) - g, (1,)).item())
        return ctx.array_pair(arr[t], arr[t + g])


class FrameFolderClip(Clip):
    """A folder of frame images: ``frames`` every image in order (positions), ``bad`` the positions of
    unreadable ones (no pair spans them)."""

    def __init__(self, path: str, frames: List[str], bad: Set[int], gap: int):
        n = len(frames) - len(bad)
        starts = None
        if bad:
            starts = [t for t in range(len(frames) - gap) if t not in bad and t + gap not in bad]
        super().__init__(short_name(path), n, len(frames) - gap if starts is None else len(starts), starts)
        self.path, self.frames, self.bad = path, frames, bad

    def in_units(self, options: ReadOptions) -> bool:
        return options.frame_units and self.starts is None

    def _random_start(self, gap: int) -> Optional[int]:
        if not self.bad:
            return int(torch.randint(0, len(self.frames) - gap, (1,)).item())
        valid = [s for s in range(len(self.frames) - gap) if s not in self.bad and s + gap not in self.bad]
        return valid[int(torch.randint(0, len(valid), (1,)).item())] if valid else None

    def read_pair(self, ctx: ReadContext, t: Optional[int]):
        """Frames ``t`` and ``t + gap`` (``t=None``: a random valid ``t``), or ``None``. Through a unit,
        frame ``t`` is reused if the unit's previous pair decoded it at the DCT scale this crop needs."""
        o, g = ctx.options, ctx.options.gap
        if t is None:
            t = self._random_start(g)
            if t is None:
                return None
        elif t in self.bad or t + g in self.bad:
            return None
        cur = ctx.cursor(self, t) if self.by_unit(ctx, t) and not o.gpu_decode else None
        have = cur.frames.get(t) if cur is not None else None  # (factor, pixels, file)
        k = t
        try:
            im1 = have[2] if have is not None else ImageFile.read(self.frames[t])  # decoded below if needed
            k = t + g
            im2 = ImageFile.read(self.frames[t + g])
            if im1.hw != im2.hw:  # rare in real data; the shared crop needs equal sizes
                k = t
                a = im1.decode()
                k = t + g
                return ctx.array_pair(a, np.asarray(Image.fromarray(im2.decode()).resize(im1.hw[::-1], Image.BICUBIC)))
            crop, flip = ctx.draw(*im1.hw)
            if o.gpu_decode and im1.jpeg and im2.jpeg:
                return EncodedPair(_tensor(im1.data), _tensor(im2.data), crop, flip, o.input_size)
            d = reduction(crop, o.input_size) if o.jpeg_draft else 1  # one DCT scale: both resampled alike
            d1, d2 = (d if im1.jpeg else 1), (d if im2.jpeg else 1)
            k = t
            a = have[1] if have is not None and have[0] == d1 else im1.decode(d1)
            k = t + g
            b = im2.decode(d2)
        except Exception as e:
            self.bad.add(k)
            ctx.warn(self.frames[k], _failure(e))
            return None
        if cur is not None:
            cur.frames[t + g] = (d2, b, im2)
            ctx.release(cur, t)
        return ctx.crop_pair(a, b, crop, flip, im1.hw, exact=not o.jpeg_draft)


class VideoFileClip(Clip):
    """A video file decoded with PyAV: ``hw`` its frame size (after ``video_short_side``); ``num_frames``
    counted from the container without decoding, lowered if fewer decode; ``decoded`` whether some frame
    decoded in this process (a failure before that makes the clip ``dead``)."""

    def __init__(self, path: str, num_frames: int, keyframes: List[int], hw: Tuple[int, int], gap: int):
        super().__init__(short_name(path), num_frames, num_frames - gap)
        self.path, self.keyframes, self.hw = path, keyframes, hw
        self.decoded = False

    def lost(self, end: int) -> bool:
        return self.dead or end >= self.num_frames

    def in_units(self, options: ReadOptions) -> bool:
        return True

    def read_pair(self, ctx: ReadContext, t: Optional[int]):
        """Frames ``t`` and ``t + gap`` (``t=None``: a random ``t``), or ``None``. Alone, a pair decodes
        its two frames at the swscale factor its crop allows; through a unit, every frame from the
        first one missing to ``t + gap`` is decoded at :meth:`ReadContext.store_hw` and kept for the
        unit's next pairs."""
        g, H, W = ctx.options.gap, *self.hw
        if self.num_frames < g + 1:
            return None
        if t is None:
            t = int(torch.randint(0, self.num_frames - g, (1,)).item())
        if t + g >= self.num_frames:
            return None
        if self.by_unit(ctx, t):
            cur, drawn, hw = ctx.cursor(self, t), None, ctx.store_hw(self.hw)
            first = next((k for k in range(t, t + g + 1) if k not in cur.frames), t + g + 1)
            wanted = range(first, t + g + 1)  # every frame on the way: the unit's next pairs need them
        else:
            cur, drawn, wanted = _Cursor(), ctx.draw(H, W), (t, t + g)  # the crop decides the decode size
            d = reduction(drawn[0], ctx.options.input_size, _VIDEO_FACTORS)
            hw = (max(1, round(H / d)), max(1, round(W / d)))
        if not self._decode(ctx, cur, wanted, hw):
            ctx.drop(cur)
            return None
        crop, flip = drawn or ctx.draw(H, W)
        pair = ctx.crop_pair(cur.frames[t], cur.frames[t + g], crop, flip, (H, W))
        if cur.key is not None:
            ctx.release(cur, t)
        else:
            cur.close()
        return pair

    def _decode(self, ctx: ReadContext, cur: _Cursor, wanted, hw: Tuple[int, int]) -> bool:
        """Decode frames ``wanted`` (ascending) into ``cur.frames`` at size ``hw``; False if one is missing
        (the clip then ends before it, or is dead if nothing of it ever decoded in this process)."""
        for k in wanted:
            if k in cur.frames:
                continue
            try:
                if cur.reader is None:
                    cur.reader = FrameReader(self.path, ctx.video_index(self.path), ctx.options.decode_threads)
                frame = cur.reader.read(k, hw)
            except Exception as e:
                if not self.decoded:
                    ctx.warn(self.path, _failure(e))
                    self.dead = True
                else:
                    self._shorten(ctx, k, f"{type(e).__name__}: {str(e)[:80]}")
                return False
            if frame is None:
                self._shorten(ctx, k, None)
                if k < ctx.options.gap + 1 and not self.decoded:
                    self.dead = True
                    ctx.warn(self.path, f"{k} decodable frame{'s' * (k != 1)} < gap+1={ctx.options.gap + 1}")
                return False
            cur.frames[k] = frame
            self.decoded = True
        return True

    def _shorten(self, ctx: ReadContext, n: int, err: Optional[str]) -> None:
        if n < self.num_frames:
            why = f" ({err})" if err else ""
            ctx.warn(self.path, f"decoded {n} of {self.num_frames} frames{why}", record=False)
            self.num_frames = n
