"""Frame-pair data for VideoMAC pretraining.

:class:`FramePairDataset` yields ``(frame1, frame2)`` pairs ``gap`` frames apart from one video, with one
random-resized crop and one horizontal-flip decision shared by both frames (so the pair differs only by
the video's own motion). An epoch is every ``(t, t + gap)`` pair of every video once, as in the authors'
YT18Dataset / K400Dataset; ``pairs_per_video=k`` instead draws ``k`` random pairs per video. Sources:
frame folders (YouTube-VOS / DAVIS layouts), video files decoded with PyAV, a text list of either, or --
by default -- seeded synthetic videos from :mod:`videomac.synthetic`.

Items are uint8 ``(3, H, W)`` frames: float conversion and ImageNet normalisation happen on the training
device (:func:`normalize_frames`, called by :func:`videomac.pretrain.loader.batch_to_device`), so batches
cross to the GPU four times smaller. Decoding does only what the crop needs (:mod:`videomac.pretrain.decode`):
JPEGs at a reduced DCT scale where the crop allows, video frames by seeking from the nearest keyframe.

All randomness comes from torch's global RNG, so saving/restoring ``torch.get_rng_state()`` resumes the
sample stream exactly (``num_workers=0``) and DataLoader workers (seeded per worker by torch) get
distinct streams. Bad data is skipped and reported rather than stopping a run.
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from PIL import Image

from videomac.media import IMAGE_EXTS, VIDEO_EXTS, is_video, list_frames
from videomac.pretrain.decode import (
    FrameReader,
    ImageFile,
    SeekError,
    VideoIndex,
    crop_box,
    crop_resize,
    decode_frames,
    jpeg_crop,
    probe_video,
    reduction,
    video_frame_rgb,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "Clip",
    "EncodedPair",
    "FrameFolderClip",
    "FramePairDataset",
    "SyntheticClip",
    "VideoFileClip",
    "normalize_frames",
    "random_resized_crop_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Frames other than JPEGs (decoded reduced) are decoded in full: above this many pixels (8K UHD is 33.2 MP)
# one pair costs seconds and gigabytes per worker, so such frames are skipped, and counted, at construction.
MAX_FULL_DECODE_PIXELS = 40_000_000
DEFAULT_MAX_OPEN_UNITS = 16
DEFAULT_MAX_UNIT_PAIRS = 64
_VIDEO_FACTORS = (4, 2, 1)  # video frames: swscale downscales by these (area filter) where the crop allows


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


def _frames_root(folder: str) -> str:
    """Where a dataset folder's videos are: ``JPEGImages/480p`` or ``JPEGImages`` (DAVIS, YouTube-VOS
    layouts) when it has one, else the folder itself."""
    for sub in (os.path.join("JPEGImages", "480p"), "JPEGImages"):
        if os.path.isdir(os.path.join(folder, sub)):
            return os.path.join(folder, sub)
    return folder


def _short(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


def _scaled_hw(hw: Tuple[int, int], short_side: Optional[int]) -> Tuple[int, int]:
    h, w = hw
    if short_side and min(h, w) > short_side:
        s = short_side / min(h, w)
        return max(1, round(h * s)), max(1, round(w * s))
    return h, w


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _failure(e: Exception) -> str:
    return f"failed to decode ({type(e).__name__}: {str(e)[:80]})"


def _frames_word(n: int) -> str:
    return f"{n} frame{'s' * (n != 1)}"


class _Cursor:
    """An open unit of one clip, read in ascending order: the frames decoded and not yet used by its
    pairs (video: at :meth:`FramePairDataset.store_hw`, as uint8 arrays; frame folders: ``(factor, uint8
    array, ImageFile)``, decoded at DCT scale ``1/factor``, the file kept for a decode at another scale)
    and, for a video, its open :class:`FrameReader`."""

    def __init__(self, reader: Optional[FrameReader] = None):
        self.reader = reader
        self.frames: Dict[int, object] = {}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.frames.clear()


# ------------------------------------------------------------------------------------------- clips
class Clip:
    """One video of a :class:`FramePairDataset`: the protocol the dataset reads pairs through.

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

    def read_pair(self, ds: FramePairDataset, c: int, t: Optional[int]):
        raise NotImplementedError

    def lost(self, end: int) -> bool:
        """Whether no pair ending at frame ``end`` or later can come from this clip any more."""
        return self.dead

    def in_units(self, ds: FramePairDataset) -> bool:
        """Whether this clip's pairs are grouped into units (served in ascending order by one process)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, frames={self.num_frames}, pairs={self.num_pairs})"


class SyntheticClip(Clip):
    """A seeded synthetic video (:func:`videomac.synthetic.render_video`), rendered on first use."""

    def __init__(self, seed: int, num_frames: int, gap: int):
        super().__init__(f"synthetic-{seed}", num_frames, num_frames - gap)
        self.seed = seed

    def frames(self, ds: FramePairDataset) -> np.ndarray:
        """All frames, ``(T, H, W, 3)`` uint8, cached per process."""
        arr = ds._synthetic.get(self.seed)
        if arr is None:
            from videomac.synthetic import render_video

            arr = render_video(self.seed, self.num_frames, ds.synthetic_size)[0]
            ds._synthetic[self.seed] = arr
        return arr

    def read_pair(self, ds: FramePairDataset, c: int, t: Optional[int]):
        arr = self.frames(ds)
        if t is None:
            t = int(torch.randint(0, len(arr) - ds.gap, (1,)).item())
        return ds._array_pair(arr[t], arr[t + ds.gap])


class FrameFolderClip(Clip):
    """A folder of frame images: ``frames`` every image in order (positions), ``bad`` the positions of
    unreadable ones (no pair spans them)."""

    def __init__(self, path: str, frames: List[str], bad: Set[int], gap: int):
        n = len(frames) - len(bad)
        starts = None
        if bad:
            starts = [t for t in range(len(frames) - gap) if t not in bad and t + gap not in bad]
        super().__init__(_short(path), n, len(frames) - gap if starts is None else len(starts), starts)
        self.path, self.frames, self.bad = path, frames, bad

    @classmethod
    def probe(cls, path: str, gap: int, skipped: Dict[str, str]) -> Optional[FrameFolderClip]:
        """Check the folder's frame headers (decoding every frame is too slow); the clip, or ``None``
        with the reasons recorded in ``skipped``."""
        try:
            frames, bad = list_frames(path), set()
        except ValueError as e:  # two files for one frame index: which is the frame is unknown
            skipped[path] = str(e).removeprefix(f"{path}: ")
            return None
        for k, f in enumerate(frames):
            if not os.path.isfile(f):
                bad.add(k)
                skipped[f] = "not a regular file (a FIFO, socket or device)"
                continue
            try:
                with Image.open(f) as im:
                    (w, h), fmt = im.size, im.format
            except Exception as e:
                bad.add(k)
                skipped[f] = f"unreadable image ({type(e).__name__})"
                continue
            if fmt != "JPEG" and w * h > MAX_FULL_DECODE_PIXELS:
                bad.add(k)
                skipped[f] = (
                    f"{w}x{h} {fmt} frame above the {MAX_FULL_DECODE_PIXELS / 1e6:g} MP limit for frames "
                    "decoded in full; downscale it (or use JPEG, decoded reduced)"
                )
        n = len(frames) - len(bad)
        if n < gap + 1:
            skipped[path] = f"{_frames_word(n)} < gap+1={gap + 1}"
            return None
        clip = cls(path, frames, bad, gap)
        if clip.num_pairs == 0:
            skipped[path] = f"no two readable frames gap={gap} apart"
            return None
        return clip

    def in_units(self, ds: FramePairDataset) -> bool:
        return ds.frame_units and self.starts is None

    def read_pair(self, ds: FramePairDataset, c: int, t: Optional[int]):
        if t is not None and ds.video_units and self.in_units(ds):
            return self._unit_pair(ds, c, t)
        return self._pair(ds, t)

    def _broken(self, ds: FramePairDataset, k: int, e: Exception) -> None:
        self.bad.add(k)
        ds._warn_once(self.frames[k], _failure(e))

    def _pair(self, ds: FramePairDataset, t: Optional[int]):
        """Frames ``t`` and ``t + gap`` (``t=None``: a random valid ``t``), or ``None``."""
        g = ds.gap
        if t is None:
            if self.bad:
                valid = [s for s in range(len(self.frames) - g) if s not in self.bad and s + g not in self.bad]
                if not valid:
                    return None
                t = valid[int(torch.randint(0, len(valid), (1,)).item())]
            else:
                t = int(torch.randint(0, len(self.frames) - g, (1,)).item())
        elif t in self.bad or t + g in self.bad:
            return None
        k = t
        try:
            im1 = ImageFile.read(self.frames[t])
            k = t + g
            im2 = ImageFile.read(self.frames[t + g])
            if im1.hw != im2.hw:  # rare in real data; the shared crop needs equal sizes
                k = t
                a = im1.decode()
                k = t + g
                b = np.asarray(Image.fromarray(im2.decode()).resize(im1.hw[::-1], Image.BICUBIC))
                return ds._array_pair(a, b)
            H, W = im1.hw
            crop, flip = ds._draw(H, W)
            if ds.gpu_decode and im1.jpeg and im2.jpeg:
                return EncodedPair(_tensor(im1.data), _tensor(im2.data), crop, flip, ds.input_size)
            # one DCT scale for both frames, so the two are resampled alike
            d = reduction(crop, ds.input_size) if ds.jpeg_draft else 1
            k = t
            a = jpeg_crop(im1, crop, ds.input_size, flip, ds.jpeg_draft, d)
            k = t + g
            b = jpeg_crop(im2, crop, ds.input_size, flip, ds.jpeg_draft, d)
        except Exception as e:
            self._broken(ds, k, e)
            return None
        return ds._out(a, b)

    def _unit_pair(self, ds: FramePairDataset, c: int, t: int):
        """Pair ``t``, reusing frame ``t`` if the unit's previous pair decoded it."""
        g = ds.gap
        if t in self.bad or t + g in self.bad:
            return None
        key, cur, end = ds._cursor(c, t)
        k = t
        try:
            have = cur.frames.get(t)  # (factor, pixels, file) if the previous pair decoded frame t
            im1 = have[2] if have is not None else ImageFile.read(self.frames[t])  # decoded below if needed
            k = t + g
            im2 = ImageFile.read(self.frames[t + g])
            if im1.hw != im2.hw or ds.gpu_decode:
                return self._pair(ds, t)
            H, W = im1.hw
            crop, flip = ds._draw(H, W)
            want = reduction(crop, ds.input_size) if ds.jpeg_draft and im1.jpeg else 1
            k = t
            if have is not None and have[0] == want:  # the previous pair decoded it at this scale
                d, a = have[:2]
            else:
                d, a = want, im1.decode(want)
            k = t + g
            b = im2.decode(d if im2.jpeg else 1)
        except Exception as e:
            self._broken(ds, k, e)
            return None
        cur.frames[t + g] = (d, b, im2)
        box, exact = crop_box(crop, (H, W), a.shape[:2]), not ds.jpeg_draft
        pair = ds._out(crop_resize(a, box, ds.input_size, flip, exact), crop_resize(b, box, ds.input_size, flip, exact))
        ds._release(key, cur, t, end)
        return pair


class VideoFileClip(Clip):
    """A video file decoded with PyAV: ``hw`` its frame size (after ``video_short_side``); ``num_frames``
    counted from the container without decoding, lowered if fewer decode; ``decoded`` whether some frame
    decoded in this process (a failure before that makes the clip ``dead``)."""

    def __init__(self, path: str, num_frames: int, keyframes: List[int], hw: Tuple[int, int], gap: int):
        super().__init__(_short(path), num_frames, num_frames - gap)
        self.path, self.keyframes, self.hw = path, keyframes, hw
        self.decoded = False

    @classmethod
    def probe(cls, path: str, gap: int, short_side: Optional[int], skipped: Dict[str, str]) -> Optional[VideoFileClip]:
        """Count the frames without decoding (:func:`decode.probe_video`); the clip, or ``None`` with the
        reason recorded in ``skipped``."""
        try:
            n, keys, hw = probe_video(path)
        except Exception as e:
            skipped[path] = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
            return None
        if n < gap + 1:
            skipped[path] = f"{_frames_word(n)} < gap+1={gap + 1}"
            return None
        return cls(path, n, keys, _scaled_hw(hw, short_side), gap)

    def lost(self, end: int) -> bool:
        return self.dead or end >= self.num_frames

    def in_units(self, ds: FramePairDataset) -> bool:
        return True

    def read_pair(self, ds: FramePairDataset, c: int, t: Optional[int]):
        if t is not None and ds.video_units:
            return self._unit_pair(ds, c, t)
        return self._pair(ds, t)

    def _failed(self, ds: FramePairDataset, first: int, e: Exception) -> None:
        """A decode error: the clip is dead if nothing of it ever decoded, else it ends at ``first``."""
        if not self.decoded:
            ds._warn_once(self.path, _failure(e))
            self.dead = True
        else:
            self._shorten(ds, first, f"{type(e).__name__}: {str(e)[:80]}")

    def _shorten(self, ds: FramePairDataset, n: int, err: Optional[str]) -> None:
        if n < self.num_frames:
            why = f" ({err})" if err else ""
            ds._warn_once(self.path, f"decoded {n} of {self.num_frames} frames{why}", record=False)
            self.num_frames = n

    def _decode(self, ds: FramePairDataset, wanted: List[int], on_frame) -> int:
        """Decode ``wanted`` frames through ``on_frame(k, av_frame)``; handles seek failures (decode from
        the start instead) and records short or broken files. Returns how many wanted frames were
        delivered (in ascending order)."""
        wanted = sorted(k for k in set(wanted) if k < self.num_frames)
        if not wanted:
            return 0
        idx = ds._video_index(self)
        try:
            try:
                done = decode_frames(self.path, idx, wanted, on_frame, ds.decode_threads)
            except SeekError:
                idx.pts = None  # this file seeks badly: count frames from the start from now on
                done = decode_frames(self.path, idx, wanted, on_frame, ds.decode_threads)
        except Exception as e:
            self._failed(ds, wanted[0], e)
            return 0
        if done:
            self.decoded = True
        if done < len(wanted):
            n = wanted[done]
            self._shorten(ds, n, None)
            if n < ds.gap + 1 and not self.decoded:
                self.dead = True
                ds._warn_once(self.path, f"{n} decodable frame{'s' * (n != 1)} < gap+1={ds.gap + 1}")
        return done

    def _pair(self, ds: FramePairDataset, t: Optional[int]):
        """One pair by seeking (``t=None``: a random valid ``t``), or ``None``."""
        g = ds.gap
        if self.num_frames < g + 1:
            return None
        if t is None:
            t = int(torch.randint(0, self.num_frames - g, (1,)).item())
        if t + g >= self.num_frames:
            return None
        H, W = self.hw
        crop, flip = ds._draw(H, W)
        d = reduction(crop, ds.input_size, _VIDEO_FACTORS)
        out_hw = (max(1, round(H / d)), max(1, round(W / d)))
        got = {}

        def keep(k, frame):
            got[k] = video_frame_rgb(frame, out_hw)

        self._decode(ds, [t, t + g], keep)
        if len(got) < 2:
            return None
        box = crop_box(crop, (H, W), got[t].shape[:2])
        return ds._out(crop_resize(got[t], box, ds.input_size, flip), crop_resize(got[t + g], box, ds.input_size, flip))

    def _unit_pair(self, ds: FramePairDataset, c: int, t: int):
        """Pair ``t`` from its unit's open reader (decoding forward)."""
        g = ds.gap
        if t + g >= self.num_frames:
            return None
        key, cur, end = ds._cursor(c, t)
        ks = [k for k in range(t, t + g + 1) if k not in cur.frames]
        if ks:
            # every frame on the way: the unit's next pairs need them
            if not self._read_frames(ds, cur, list(range(ks[0], t + g + 1)), ds.store_hw(self.hw)):
                cur.close()
                ds._cursors.pop(key, None)
                return None
        a, b = cur.frames[t], cur.frames[t + g]
        H, W = self.hw
        crop, flip = ds._draw(H, W)
        box = crop_box(crop, (H, W), a.shape[:2])
        pair = ds._out(crop_resize(a, box, ds.input_size, flip), crop_resize(b, box, ds.input_size, flip))
        ds._release(key, cur, t, end)
        return pair

    def _read_frames(self, ds: FramePairDataset, cur: _Cursor, ks: List[int], hw) -> bool:
        """Decode frames ``ks`` (ascending) into ``cur.frames``; False if any is missing (the clip is
        shortened, or dead if nothing of it ever decoded)."""
        for _ in range(2):
            try:
                if cur.reader is None:
                    cur.reader = FrameReader(self.path, ds._video_index(self), ds.decode_threads)
                for k in ks:
                    if k in cur.frames:
                        continue
                    frame = cur.reader.read(k)
                    if frame is None:
                        self._shorten(ds, k, None)
                        return False
                    cur.frames[k] = video_frame_rgb(frame, hw)
                    self.decoded = True
                return True
            except SeekError:
                cur.close()
                ds._video_index(self).pts = None  # seeks badly: count frames from the start from now on
            except Exception as e:
                cur.close()
                self._failed(ds, ks[0], e)
                return False
        return False


class FramePairDataset(torch.utils.data.Dataset):
    """Pairs of frames ``gap`` apart from videos, with a shared random-resized crop and flip.

    Each item returns ``(frame1, frame2)``, uint8 ``(3, H, W)`` (``normalize=True``: float32, ImageNet
    normalised; a training loop normalises batches on its device with :func:`normalize_frames`), frames
    ``t`` and ``t + gap`` of one video. By default (``pairs_per_video=None``) the items are every such
    pair of every video once, as the authors' YT18Dataset / K400Dataset: ``len`` is the sum over videos of
    ``n_frames - gap``, item ``i`` is a fixed ``(video, t)`` (:meth:`locate`; videos in order, ``t``
    ascending; only the crop and flip are random). ``pairs_per_video=k`` gives ``k`` items per video
    instead (item ``i`` uses video ``i % num_videos`` and a random ``t``), for shorter epochs.

    ``source``: a folder of frame folders (``root/<video>/<frame>``, also ``root/JPEGImages[/480p]/...``),
    a folder of video files, a text file listing frame folders / video files (one per line, relative to
    the list, ``#`` comments), a single video file or frame folder, a list of such paths, or ``None`` for
    ``synthetic_videos`` seeded synthetic videos (rendered lazily, cached in memory per process).

    Augmentation, as the paper: one crop (torchvision's RandomResizedCrop parameters on frame 1's full
    size; ``scale``, ``ratio`` = width/height) and one flip for both frames, bicubic resize. Decoding:

    - JPEG frames are decoded at the smallest DCT scale (1/8..1) at which the crop still covers the output
      size (``jpeg_draft=True``), the crop's edges rounded to that scale's pixel grid, and resized in
      uint8 (torch's antialiased bicubic, PIL's filter). ``jpeg_draft=False`` decodes in full, resizes with PIL
      and is then exactly the authors' PIL ``resized_crop``; the difference is bounded by a test (see
      docs/pretraining.md, "Data loading").
    - Video frames are decoded by seeking to the keyframe before the pair and decoding forward, frames
      identified by timestamp (exactly the frames a full decode gives); nothing holds a whole video.
      A pair's video frames are converted at the swscale factor (1, 1/2, 1/4) where its crop allows.
      With ``video_units=True`` (set by :func:`videomac.pretrain.loader.make_loader`, whose epoch order
      :func:`~videomac.pretrain.loader.epoch_indices` sends a unit's pairs to one worker) a miss decodes
      the pair's whole unit -- the run of pairs from one keyframe to the next, at most ``max_unit_pairs``
      -- once and keeps its frames, downscaled to :meth:`store_hw` (about 1 MB each at 224 x 224,
      whatever the video's resolution), until the unit's pairs have used them, within
      ``frame_cache_bytes`` per process (LRU over units). Crops are drawn when a pair is requested, so
      the sample stream does not depend on what was cached. Frame folders keep the authors' fully random
      pair order unless ``frame_units=True`` groups them the same way (each JPEG then decoded once for
      its two pairs, but a batch mixes runs of consecutive pairs instead of independent ones).
      ``video_short_side`` downscales frames (before cropping); ``decode_threads`` is PyAV's per process.
    - ``gpu_decode=True``: JPEG pairs are returned as :class:`EncodedPair` (file bytes + crop + flip) for
      :func:`videomac.pretrain.loader.batch_to_device` to decode on the training device.

    Unusable inputs are skipped and recorded in :attr:`skipped` (path -> reason) with one warning at
    construction; an unreadable image in a frame folder is skipped too, and no pair spans it (pairs are
    always ``gap`` frames apart in the folder's order). A frame that fails to decode later is recorded
    too (in that worker process), warned about once, and the item is replaced by the next index's pair
    that decodes (a video that decodes fewer frames than counted loses its pairs past its end the same
    way).
    """

    def __init__(
        self,
        source: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
        input_size: Union[int, Sequence[int]] = 224,
        gap: int = 1,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        pairs_per_video: Optional[int] = None,
        video_short_side: Optional[int] = None,
        synthetic_videos: int = 32,
        synthetic_frames: int = 32,
        synthetic_size: Tuple[int, int] = (192, 256),
        seed: int = 0,
        normalize: bool = False,
        jpeg_draft: bool = True,
        gpu_decode: bool = False,
        video_units: bool = False,
        frame_units: bool = False,
        max_unit_pairs: int = DEFAULT_MAX_UNIT_PAIRS,
        max_open_units: int = DEFAULT_MAX_OPEN_UNITS,
        decode_threads: int = 1,
    ):
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        _check_settings(self.input_size, gap, scale, ratio, pairs_per_video, max_unit_pairs)
        self.gap = int(gap)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.pairs_per_video = None if pairs_per_video is None else int(pairs_per_video)
        self.video_short_side = video_short_side
        self.synthetic_size = (int(synthetic_size[0]), int(synthetic_size[1]))
        self.normalize = bool(normalize)
        self.jpeg_draft = bool(jpeg_draft)
        self.gpu_decode = bool(gpu_decode)
        self.video_units = bool(video_units)
        self.frame_units = bool(frame_units)
        self.max_unit_pairs = int(max_unit_pairs)
        self.decode_threads = int(decode_threads)
        self.skipped: Dict[str, str] = {}
        self._warned: set = set()
        self._synthetic: Dict[int, np.ndarray] = {}
        self._indices: OrderedDict[str, VideoIndex] = OrderedDict()
        self.max_open_units = int(max_open_units)
        self._cursors: OrderedDict[Tuple[int, int], _Cursor] = OrderedDict()
        self._units: Dict[int, List[int]] = {}

        if source is None:
            if int(synthetic_frames) < self.gap + 1:
                raise ValueError(f"synthetic_frames={synthetic_frames} < gap+1={self.gap + 1}")
            self.source, self.source_kind = None, "synthetic"
            n = int(synthetic_frames)
            self.clips: List[Clip] = [SyntheticClip(seed + i, n, self.gap) for i in range(int(synthetic_videos))]
        else:
            self.source = source if isinstance(source, (list, tuple)) else os.fspath(source)
            self.source_kind, candidates = self._resolve(self.source)
            self.clips = [c for c in (self._probe(p) for p in _unique(candidates, self._where())) if c is not None]
        self._report_skipped()
        # Item i of the every-pair epoch is pair i - offsets[c] of clip c, for offsets[c] <= i < offsets[c+1].
        self._offsets = [0]
        for c in self.clips:
            self._offsets.append(self._offsets[-1] + c.num_pairs)

    # ----------------------------------------------------------------------------------- discovery
    def _report_skipped(self) -> None:
        """One warning listing what construction skipped; an error if nothing usable is left."""
        if self.skipped:
            names = [f"{_short(p)} ({r})" for p, r in list(self.skipped.items())[:20]]
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(
                f"FramePairDataset: skipped {len(self.skipped)} unusable item(s) in {self._where()}: "
                + "; ".join(names)
                + more,
                stacklevel=3,
            )
        if not self.clips:
            reasons = "; ".join(f"{_short(p)}: {r}" for p, r in list(self.skipped.items())[:20])
            detail = f"{len(self.skipped)} skipped ({reasons})" if self.skipped else "nothing found"
            raise ValueError(
                f"no usable videos under {self._where()}: {detail}. Expected frame folders "
                f"(<video>/<frame>{'|'.join(IMAGE_EXTS)}) or video files ({' '.join(VIDEO_EXTS)}) "
                f"with at least gap+1={self.gap + 1} frames."
            )

    def _where(self) -> str:
        if self.source is None:
            return "synthetic videos"
        if isinstance(self.source, (list, tuple)):
            return f"a list of {len(self.source)} path(s)"
        return str(self.source)

    def _resolve(self, source) -> Tuple[str, List[str]]:
        """Turn ``source`` into ``(kind, candidate paths)``; each candidate is a frame folder or video."""
        if isinstance(source, (list, tuple)):
            return "list", [os.fspath(p) for p in source]
        if not os.path.exists(source):
            raise FileNotFoundError(f"FramePairDataset source not found: {source}")
        if not os.path.isfile(source) and not os.path.isdir(source):  # opening a FIFO would block forever
            raise ValueError(f"FramePairDataset source {source} is not a regular file or a folder")
        if os.path.isfile(source):
            if is_video(source):
                return "video file", [source]
            return "list file", self._read_list(source)
        root = _frames_root(source)
        if list_frames(root):
            return "frame folder", [root]
        subdirs, videos = [], []
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            if os.path.isdir(p):
                subdirs.append(p)
            elif is_video(p):
                videos.append(p)
        kinds = [k for k, v in (("frame folders", subdirs), ("video files", videos)) if v]
        return " and ".join(kinds) or "empty folder", subdirs + videos

    def _read_list(self, path: str) -> List[str]:
        base = os.path.dirname(os.path.abspath(path))
        out = []
        try:
            with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Notepad's) is not a name
                lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is neither a video ({' '.join(VIDEO_EXTS)}) nor a text list") from e
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = os.path.expanduser(line)
            out.append(p if os.path.isabs(p) else os.path.join(base, p))
        return out

    def _probe(self, path: str) -> Optional[Clip]:
        """Validate one candidate cheaply; returns a clip or records why it was skipped."""
        if not os.path.exists(path):
            self.skipped[path] = "not found"
        elif os.path.isdir(path):
            return FrameFolderClip.probe(path, self.gap, self.skipped)
        elif not os.path.isfile(path):  # opening a FIFO would block forever
            self.skipped[path] = "not a regular file (a FIFO, socket or device)"
        elif is_video(path):
            return VideoFileClip.probe(path, self.gap, self.video_short_side, self.skipped)
        else:
            self.skipped[path] = "not a frame folder or video file"
        return None

    # ------------------------------------------------------------------------------------- loading
    @property
    def num_videos(self) -> int:
        return len(self.clips)

    @property
    def num_frames(self) -> int:
        return sum(c.num_frames for c in self.clips)

    @property
    def num_pairs(self) -> int:
        """Every ``(t, t + gap)`` pair of every video (the length of an every-pair epoch)."""
        return self._offsets[-1]

    def describe(self) -> str:
        """One line for logs: source kind, #videos, #frames, #pairs, #skipped."""
        h, w = self.input_size
        per_epoch = "all pairs" if self.pairs_per_video is None else f"{self.pairs_per_video}/video"
        return (
            f"FramePairDataset[{self.source_kind}] {self._where()}: {self.num_videos} videos, "
            f"{self.num_frames} frames, {self.num_pairs} pairs, {len(self.skipped)} skipped; gap={self.gap}, "
            f"{len(self)} pairs/epoch ({per_epoch}), input {h}x{w}"
        )

    def __len__(self) -> int:
        if self.pairs_per_video is None:
            return self._offsets[-1]
        return len(self.clips) * self.pairs_per_video

    def locate(self, index: int) -> Tuple[int, Optional[int]]:
        """``(video, t)`` of item ``index``: the pair is frames ``t`` and ``t + gap`` of ``clips[video]``.

        ``t`` is ``None`` with ``pairs_per_video`` set (it is drawn at random on each access).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.pairs_per_video is not None:
            return index % len(self.clips), None
        c = bisect.bisect_right(self._offsets, index) - 1
        local = index - self._offsets[c]
        starts = self.clips[c].starts
        return c, local if starts is None else starts[local]

    # ------------------------------------------------------------------------------------ units
    def _unit_bounds(self, c: int) -> List[int]:
        """Pair starts where clip ``c``'s units begin: keyframes, long runs split evenly (cached)."""
        got = self._units.get(c)
        if got is None:
            clip = self.clips[c]
            n = clip.num_pairs
            keys = sorted({k for k in clip.keyframes if 0 < k < n} | {0})
            got = []
            for a, b in zip(keys, keys[1:] + [n]):
                parts = max(1, math.ceil((b - a) / self.max_unit_pairs))
                got += [a + (b - a) * p // parts for p in range(parts)]
            self._units[c] = got
        return got

    def _unit_of(self, c: int, t: int) -> Tuple[int, int, int]:
        """``(unit number, first t, end t)`` of the unit holding pair ``t`` of video clip ``c``."""
        bounds = self._unit_bounds(c)
        u = bisect.bisect_right(bounds, t) - 1
        end = bounds[u + 1] if u + 1 < len(bounds) else self.clips[c].num_pairs
        return u, bounds[u], end

    def unit_ranges(self) -> Optional[List[Tuple[int, int]]]:
        """Index ranges ``[lo, hi)`` of consecutive pairs best served in ascending order by one process
        (a unit: decoded forward once, each frame serving both its pairs), or ``None`` when unit mode
        is off (``video_units=False``) or ``pairs_per_video`` is set. Synthetic clips, frame folders with
        unreadable frames and, unless ``frame_units=True``, all frame folders give one-item ranges: their
        pairs then come in the authors' fully random order (a JPEG pair costs the same wherever it is)."""
        if not self.video_units or self.pairs_per_video is not None:
            return None
        out = []
        for c, clip in enumerate(self.clips):
            lo = self._offsets[c]
            if not clip.in_units(self):
                out += [(i, i + 1) for i in range(lo, self._offsets[c + 1])]
                continue
            bounds = self._unit_bounds(c) + [clip.num_pairs]
            out += [(lo + a, lo + b) for a, b in zip(bounds, bounds[1:])]
        return out

    def __getstate__(self):
        # Workers started by pickling (spawn) should not copy the parent's decoded frames.
        state = self.__dict__.copy()
        state["_cursors"] = OrderedDict()
        state["_synthetic"] = {}
        state["_indices"] = OrderedDict()
        return state

    # ------------------------------------------------------------------------------------ decoding
    def _warn_once(self, path: str, reason: str, record: bool = True) -> None:
        if record:
            self.skipped[path] = reason
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"FramePairDataset: {path}: {reason}", stacklevel=3)

    def _draw(self, height: int, width: int) -> Tuple[Tuple[int, int, int, int], bool]:
        crop = random_resized_crop_params(height, width, self.scale, self.ratio)
        return crop, bool(torch.rand(1).item() < self.hflip)

    def _out(self, a: np.ndarray, b: np.ndarray):
        x, y = _chw(a), _chw(b)
        if self.normalize:
            x, y = normalize_frames(x), normalize_frames(y)
        return x, y

    def _array_pair(self, a: np.ndarray, b: np.ndarray):
        H, W = a.shape[:2]
        crop, flip = self._draw(H, W)
        box = crop_box(crop, (H, W), (H, W))
        return self._out(crop_resize(a, box, self.input_size, flip), crop_resize(b, box, self.input_size, flip))

    def _video_index(self, clip: VideoFileClip) -> VideoIndex:
        """The clip's :class:`VideoIndex`, kept for the 64 most recently used videos of this process."""
        idx = self._indices.get(clip.path)
        if idx is None:
            idx = VideoIndex.read(clip.path)
            self._indices[clip.path] = idx
            while len(self._indices) > 64:
                self._indices.popitem(last=False)
        else:
            self._indices.move_to_end(clip.path)
        return idx

    def store_hw(self, clip_hw: Tuple[int, int]) -> Tuple[int, int]:
        """The size video frames are converted to in unit mode: the smallest at which every crop the
        scale / ratio ranges allow still covers the output size (so resizing never upsamples), at most
        full size. About ``out_h * out_w / (scale_min * ratio_min)`` pixels whatever the video's
        resolution (775 x 436 for a 720p video at 224 x 224 with the paper's ranges)."""
        H, W = clip_hw
        area = H * W * self.scale[0]
        min_h = math.sqrt(area / self.ratio[1])
        min_w = math.sqrt(area * self.ratio[0])
        s = min(1.0, max((self.input_size[0] + 1) / max(1.0, min_h), (self.input_size[1] + 1) / max(1.0, min_w)))
        return max(1, round(H * s)), max(1, round(W * s))

    def _cursor(self, c: int, t: int) -> Tuple[Tuple[int, int], _Cursor, int]:
        """The open cursor of the unit holding pair ``t`` of clip ``c`` (opened if needed, the least
        recently used one closed beyond ``max_open_units``), and the unit's end."""
        u, _, end = self._unit_of(c, t)
        key = (c, u)
        cur = self._cursors.get(key)
        if cur is None:
            cur = _Cursor()
            self._cursors[key] = cur
            while len(self._cursors) > self.max_open_units:
                self._cursors.popitem(last=False)[1].close()
        else:
            self._cursors.move_to_end(key)
        return key, cur, end

    def _release(self, key, cur: _Cursor, t: int, end: int) -> None:
        for k in [k for k in cur.frames if k <= t]:  # pairs come in ascending t: frame t is done
            del cur.frames[k]
        if t + 1 >= end:
            cur.close()
            self._cursors.pop(key, None)

    # --------------------------------------------------------------------------------------- items
    def __getitem__(self, index: int):
        total = len(self)
        c, t = self.locate(index)
        walked = 0
        while walked < total:
            clip = self.clips[c]
            pair = None if clip.dead else clip.read_pair(self, c, t)
            if pair is not None:
                return pair
            # Unusable: take the next index's pair, skipping whole clips that cannot give one.
            step = self._offsets[c + 1] - index if t is not None and clip.lost(t + self.gap) else 1
            index, walked = (index + step) % total, walked + step
            c, t = self.locate(index)
        raise RuntimeError(f"FramePairDataset: no decodable video left (skipped: {len(self.skipped)})")


def _check_settings(input_size, gap, scale, ratio, pairs_per_video, max_unit_pairs) -> None:
    if min(input_size) < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if int(gap) < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
    if pairs_per_video is not None and int(pairs_per_video) < 1:
        raise ValueError(f"pairs_per_video must be >= 1 or None (every pair), got {pairs_per_video}")
    if int(max_unit_pairs) < 1:
        raise ValueError(f"max_unit_pairs must be >= 1, got {max_unit_pairs}")


def _unique(paths: List[str], where: str) -> List[str]:
    """``paths`` without repeats of a video already listed (same real path), with one warning naming
    them: a list that names a video twice would otherwise train on it twice per epoch."""
    seen: Set[str] = set()
    out, repeats = [], []
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            repeats.append(p)
        else:
            seen.add(key)
            out.append(p)
    if repeats:
        more = f" and {len(repeats) - 10} more" if len(repeats) > 10 else ""
        names = ", ".join(_short(p) for p in repeats[:10]) + more
        warnings.warn(
            f"FramePairDataset: {where} lists {len(repeats)} video(s) more than once; each is used once: {names}",
            stacklevel=3,
        )
    return out


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
