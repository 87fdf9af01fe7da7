"""Frame-pair data for VideoMAC pretraining.

:class:`FramePairDataset` yields ``(frame1, frame2)`` pairs ``gap`` frames apart from one video, with one
random-resized crop and one horizontal-flip decision shared by both frames (so the pair differs only by
the video's own motion). An epoch is every ``(t, t + gap)`` pair of every video once, as in the authors'
YT18Dataset / K400Dataset; ``pairs_per_video=k`` instead draws ``k`` random pairs per video. Sources:
frame folders (YouTube-VOS / DAVIS layouts), video files decoded with PyAV, a text list of either, or --
by default -- seeded synthetic videos from :mod:`videomac.synthetic`.

The parts live in three modules: :mod:`videomac.pretrain.sources` finds the videos,
:mod:`videomac.pretrain.clips` reads pairs out of one video (given a :class:`~videomac.pretrain.clips.ReadContext`,
never the dataset), and this module numbers the pairs of an epoch and skips what cannot be read.

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
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from videomac.media import IMAGE_EXTS, VIDEO_EXTS
from videomac.pretrain.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Clip,
    EncodedPair,
    FrameFolderClip,
    ReadContext,
    ReadOptions,
    SyntheticClip,
    VideoFileClip,
    normalize_frames,
    random_resized_crop_params,
)
from videomac.pretrain.sources import MAX_FULL_DECODE_PIXELS, describe_source, find_clips, report_skipped

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTS",
    "MAX_FULL_DECODE_PIXELS",
    "VIDEO_EXTS",
    "Clip",
    "EncodedPair",
    "FrameFolderClip",
    "FramePairDataset",
    "ReadOptions",
    "SyntheticClip",
    "VideoFileClip",
    "normalize_frames",
    "random_resized_crop_params",
]

_OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(ReadOptions))


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

    Settings: the keyword arguments above that are fields of
    :class:`~videomac.pretrain.clips.ReadOptions` (how pairs are read), or ``options``, a
    :class:`~videomac.pretrain.clips.ReadOptions` (keywords given too override its fields); they read
    back as attributes (``dataset.gap``, ``dataset.input_size``, ...).
    """

    def __init__(
        self,
        source: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
        options: Optional[ReadOptions] = None,
        *,
        pairs_per_video: Optional[int] = None,
        synthetic_videos: int = 32,
        synthetic_frames: int = 32,
        seed: int = 0,
        **settings,
    ):
        options = ReadOptions(**settings) if options is None else dataclasses.replace(options, **settings)
        if pairs_per_video is not None and int(pairs_per_video) < 1:
            raise ValueError(f"pairs_per_video must be >= 1 or None (every pair), got {pairs_per_video}")
        self.pairs_per_video = None if pairs_per_video is None else int(pairs_per_video)
        self.ctx = ReadContext(options)
        self.skipped: Dict[str, str] = self.ctx.skipped
        if source is None:
            if int(synthetic_frames) < options.gap + 1:
                raise ValueError(f"synthetic_frames={synthetic_frames} < gap+1={options.gap + 1}")
            self.source, self.source_kind = None, "synthetic"
            n = int(synthetic_frames)
            self.clips: List[Clip] = [SyntheticClip(seed + i, n, options.gap) for i in range(int(synthetic_videos))]
        else:
            self.source = source if isinstance(source, (list, tuple)) else os.fspath(source)
            self.source_kind, self.clips = find_clips(
                self.source, options.gap, options.video_short_side, self.skipped, stacklevel=3
            )
        report_skipped(self.skipped, self.clips, describe_source(self.source), options.gap, stacklevel=3)
        # Item i of the every-pair epoch is pair i - offsets[c] of clip c, for offsets[c] <= i < offsets[c+1].
        self._offsets = [0]
        for c in self.clips:
            self._offsets.append(self._offsets[-1] + c.num_pairs)

    @property
    def options(self) -> ReadOptions:
        return self.ctx.options

    def __getattr__(self, name: str):
        # the reading settings read back as attributes (dataset.gap, dataset.input_size, ...)
        if name in _OPTION_FIELDS and "ctx" in self.__dict__:
            return getattr(self.ctx.options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        # ... and are set there (make_loader turns on video_units): the clips read the options
        if name in _OPTION_FIELDS:
            setattr(self.ctx.options, name, value)
        else:
            super().__setattr__(name, value)

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
            f"FramePairDataset[{self.source_kind}] {describe_source(self.source)}: {self.num_videos} videos, "
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
            if not clip.in_units(self.options):
                out += [(i, i + 1) for i in range(lo, self._offsets[c + 1])]
                continue
            bounds = clip.unit_bounds(self.max_unit_pairs) + [clip.num_pairs]
            out += [(lo + a, lo + b) for a, b in zip(bounds, bounds[1:])]
        return out

    def store_hw(self, clip_hw: Tuple[int, int]) -> Tuple[int, int]:
        """The size video frames are kept at in unit mode (:meth:`~videomac.pretrain.clips.ReadContext.store_hw`)."""
        return self.ctx.store_hw(clip_hw)

    def __getitem__(self, index: int):
        total = len(self)
        c, t = self.locate(index)
        walked = 0
        while walked < total:
            clip = self.clips[c]
            pair = None if clip.dead else clip.read_pair(self.ctx, t)
            if pair is not None:
                return pair
            # Unusable: take the next index's pair, skipping whole clips that cannot give one.
            step = self._offsets[c + 1] - index if t is not None and clip.lost(t + self.gap) else 1
            index, walked = (index + step) % total, walked + step
            c, t = self.locate(index)
        raise RuntimeError(f"FramePairDataset: no decodable video left (skipped: {len(self.skipped)})")
