"""Frame-pair data for VideoMAC pretraining.

:class:`FramePairDataset` yields ``(frame1, frame2)`` pairs ``gap`` frames apart from one video, with one
random-resized crop and one horizontal-flip decision shared by both frames (so the pair differs only by
the video's own motion). An epoch is every ``(t, t + gap)`` pair of every video once, as in the authors'
YT18Dataset / K400Dataset; ``pairs_per_video=k`` instead draws ``k`` random pairs per video. Sources:
frame folders (YouTube-VOS / DAVIS layouts), video files decoded with PyAV, a text list of either, or --
by default -- seeded synthetic videos from :mod:`videomac.synthetic`.

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
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "FramePairDataset",
    "VideoCache",
    "random_resized_crop_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
DEFAULT_CACHE_BYTES = int(1.5e9)


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


class VideoCache:
    """A per-process LRU cache of decoded videos (uint8 ``(T, H, W, 3)`` arrays) under a byte budget.

    Decoding a whole video to sample one pair is wasteful, and seeking is codec-dependent and often
    inexact, so each video is decoded fully once and kept while it fits. The trade-off: memory is
    ``max_bytes`` *per DataLoader worker*; if the working set exceeds the budget, videos are decoded again
    after eviction (set ``video_short_side`` to store smaller frames). A video larger than the whole
    budget is returned but not cached.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> Optional[np.ndarray]:
        arr = self._items.get(key)
        if arr is not None:
            self._items.move_to_end(key)
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key).nbytes
        if arr.nbytes > self.max_bytes:
            return
        while self._items and self.bytes + arr.nbytes > self.max_bytes:
            self.bytes -= self._items.popitem(last=False)[1].nbytes
        self._items[key] = arr
        self.bytes += arr.nbytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


@dataclass
class _Clip:
    name: str
    kind: str  # "frames" | "video" | "synthetic" | "dead" (failed to decode in this process)
    path: str = ""
    frames: List[str] = field(default_factory=list)  # frame folders: every image, in order (positions)
    num_frames: int = 0  # usable frames (video files: counted, then the decoded count once decoded)
    seed: int = 0
    bad: Set[int] = field(default_factory=set)  # frame folders: positions of unreadable images
    starts: Optional[List[int]] = None  # first frames of the pairs if not simply 0..num_pairs-1
    num_pairs: int = 0  # (t, t + gap) pairs fixed at construction: this clip's share of the epoch


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def _list_images(folder: str) -> List[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    return [os.path.join(folder, n) for n in names]


_INDEXED_FORMATS = ("mov", "mp4")  # sample tables list every frame, read at open without demuxing


def _indexed_frame_count(container, stream, file_size: int) -> Optional[int]:
    """Frames from the container's index (mp4 / mov), or ``None`` where it cannot be trusted.

    ``stream.frames`` alone is not exact: an edit list can mark leading samples as discarded (the decoder
    drops them), so the count skips index entries flagged discard, as the decoder does. The index is used
    only when it lists every sample (``len == stream.frames``; fragmented mp4 fails this) and every sample
    lies inside the file (a truncated file fails this).
    """
    if not set(container.format.name.split(",")) & set(_INDEXED_FORMATS) or stream.frames <= 0:
        return None
    entries = getattr(stream, "index_entries", None)  # PyAV >= 14
    if entries is None or len(entries) != stream.frames:
        return None
    n = 0
    for e in entries:
        if e.pos < 0 or e.pos + e.size > file_size:
            return None
        n += e.size > 0 and not e.is_discard
    return n


def _count_video_frames(path: str) -> int:
    """The number of frames a full decode yields, without decoding.

    mp4 / mov: from the container's sample index (no packet is read). Other containers (mkv / webm
    index keyframes only; avi's index is optional): by demuxing every packet, still without decoding.
    Packets flagged discard (edit lists) and empty packets yield no frame and are not counted. A file
    whose packets later fail to decode is caught on its first decode in :meth:`FramePairDataset.__getitem__`.
    """
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        n = _indexed_frame_count(container, stream, os.path.getsize(path))
        if n is not None:
            return n
        return sum(1 for p in container.demux(stream) if p.size > 0 and not p.is_discard)


def _decode_video(path: str, short_side: Optional[int]) -> Tuple[np.ndarray, Optional[str]]:
    """Decode all frames to uint8 RGB, optionally downscaled; returns ``(frames, error or None)``.

    A mid-stream decode error keeps the frames decoded so far (the caller decides if they suffice).
    """
    import av

    out, err = [], None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                w, h = frame.width, frame.height
                if short_side and min(w, h) > short_side:
                    s = short_side / min(w, h)
                    w, h = max(1, round(w * s)), max(1, round(h * s))
                    frame = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
                out.append(frame.to_ndarray(format="rgb24"))
    except Exception as e:  # PyAV raises many error types; any of them means a damaged stream
        err = f"{type(e).__name__}: {e}"
    if not out:
        return np.zeros((0, 1, 1, 3), np.uint8), err or "no frames decoded"
    return np.stack(out), err


def _read_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _short(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


class FramePairDataset(torch.utils.data.Dataset):
    """Pairs of frames ``gap`` apart from videos, with a shared random-resized crop and flip.

    Each item returns ``(frame1, frame2)``, float32 ``(3, H, W)`` ImageNet-normalized, frames ``t`` and
    ``t + gap`` of one video. By default (``pairs_per_video=None``) the items are every such pair of every
    video once, as the authors' YT18Dataset / K400Dataset: ``len`` is the sum over videos of
    ``n_frames - gap``, item ``i`` is a fixed ``(video, t)`` (:meth:`locate`; videos in order, ``t``
    ascending; only the crop and flip are random). ``pairs_per_video=k`` gives ``k`` items per video
    instead (item ``i`` uses video ``i % num_videos`` and a random ``t``), for shorter epochs.

    ``source``: a folder of frame folders (``root/<video>/<frame>``, also ``root/JPEGImages[/480p]/...``),
    a folder of video files, a text file listing frame folders / video files (one per line, relative to
    the list, ``#`` comments), a single video file or frame folder, a list of such paths, or ``None`` for
    ``synthetic_videos`` seeded synthetic videos (rendered lazily, cached in memory per process).

    Unusable inputs are skipped and recorded in :attr:`skipped` (path -> reason) with one warning at
    construction; an unreadable image in a frame folder is skipped too, and no pair spans it (pairs are
    always ``gap`` frames apart in the folder's order). A frame that fails to decode later is recorded
    too (in that worker process), warned about once, and the item is replaced by the next index's pair
    that decodes (a video that decodes fewer frames than counted loses its pairs past its end the same
    way). ``ratio`` is width/height as in
    torchvision. ``video_short_side`` downscales decoded videos (before cropping) to save cache memory;
    ``video_cache_bytes`` is the per-process budget of the decoded-video LRU cache (see
    :class:`VideoCache`).
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
        video_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if int(gap) < 1:
            raise ValueError(f"gap must be >= 1, got {gap}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        if pairs_per_video is not None and int(pairs_per_video) < 1:
            raise ValueError(f"pairs_per_video must be >= 1 or None (every pair), got {pairs_per_video}")
        self.gap = int(gap)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.pairs_per_video = None if pairs_per_video is None else int(pairs_per_video)
        self.video_short_side = video_short_side
        self.synthetic_size = (int(synthetic_size[0]), int(synthetic_size[1]))
        self.skipped: Dict[str, str] = {}
        self._warned: set = set()
        self._cache = VideoCache(video_cache_bytes)
        self._synthetic: Dict[int, np.ndarray] = {}
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

        if source is None:
            if int(synthetic_frames) < self.gap + 1:
                raise ValueError(f"synthetic_frames={synthetic_frames} < gap+1={self.gap + 1}")
            self.source, self.source_kind = None, "synthetic"
            n = int(synthetic_frames)
            self.clips = [
                _Clip(f"synthetic-{seed + i}", "synthetic", num_frames=n, seed=seed + i, num_pairs=n - self.gap)
                for i in range(int(synthetic_videos))
            ]
        else:
            self.source = source if isinstance(source, (list, tuple)) else os.fspath(source)
            self.source_kind, candidates = self._resolve(self.source)
            self.clips = [c for c in (self._probe(p) for p in candidates) if c is not None]
        if self.skipped:
            names = [f"{_short(p)} ({r})" for p, r in list(self.skipped.items())[:20]]
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(
                f"FramePairDataset: skipped {len(self.skipped)} unusable item(s) in {self._where()}: "
                + "; ".join(names)
                + more,
                stacklevel=2,
            )
        if not self.clips:
            reasons = "; ".join(f"{_short(p)}: {r}" for p, r in list(self.skipped.items())[:20])
            detail = f"{len(self.skipped)} skipped ({reasons})" if self.skipped else "nothing found"
            raise ValueError(
                f"no usable videos under {self._where()}: {detail}. Expected frame folders "
                f"(<video>/<frame>{'|'.join(IMAGE_EXTS)}) or video files ({' '.join(VIDEO_EXTS)}) "
                f"with at least gap+1={self.gap + 1} frames."
            )
        # Item i of the every-pair epoch is pair i - offsets[c] of clip c, for offsets[c] <= i < offsets[c+1].
        self._offsets = [0]
        for c in self.clips:
            self._offsets.append(self._offsets[-1] + c.num_pairs)

    # ----------------------------------------------------------------------------------- discovery
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
        if os.path.isfile(source):
            if _is_video(source):
                return "video file", [source]
            return "list file", self._read_list(source)
        root = source
        for sub in (os.path.join("JPEGImages", "480p"), "JPEGImages"):
            if os.path.isdir(os.path.join(source, sub)):
                root = os.path.join(source, sub)
                break
        if _list_images(root):
            return "frame folder", [root]
        subdirs, videos = [], []
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            if os.path.isdir(p):
                subdirs.append(p)
            elif _is_video(p):
                videos.append(p)
        kinds = [k for k, v in (("frame folders", subdirs), ("video files", videos)) if v]
        return " and ".join(kinds) or "empty folder", subdirs + videos

    def _read_list(self, path: str) -> List[str]:
        base = os.path.dirname(os.path.abspath(path))
        out = []
        try:
            with open(path, encoding="utf-8") as f:
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

    def _probe(self, path: str) -> Optional[_Clip]:
        """Validate one candidate cheaply; returns a clip or records why it was skipped."""
        need = self.gap + 1
        if not os.path.exists(path):
            self.skipped[path] = "not found"
            return None
        if os.path.isdir(path):
            frames, bad = _list_images(path), set()
            for k, f in enumerate(frames):
                try:
                    with Image.open(f):  # parses the header only: decoding every frame is too slow
                        pass
                except Exception as e:
                    bad.add(k)
                    self.skipped[f] = f"unreadable image ({type(e).__name__})"
            n = len(frames) - len(bad)
            if n < need:
                self.skipped[path] = f"{n} frame{'s' * (n != 1)} < gap+1={need}"
                return None
            starts = None
            if bad:
                starts = [t for t in range(len(frames) - self.gap) if t not in bad and t + self.gap not in bad]
                if not starts:
                    self.skipped[path] = f"no two readable frames gap={self.gap} apart"
                    return None
            num_pairs = len(frames) - self.gap if starts is None else len(starts)
            return _Clip(_short(path), "frames", path, frames, n, bad=bad, starts=starts, num_pairs=num_pairs)
        if not _is_video(path):
            self.skipped[path] = "not a frame folder or video file"
            return None
        try:
            n = _count_video_frames(path)
        except Exception as e:
            self.skipped[path] = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
            return None
        if n < need:
            self.skipped[path] = f"{n} frame{'s' * (n != 1)} < gap+1={need}"
            return None
        return _Clip(_short(path), "video", path, num_frames=n, num_pairs=n - self.gap)

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

    def __getstate__(self):
        # Workers started by pickling (spawn) should not copy the parent's decoded frames.
        state = self.__dict__.copy()
        state["_cache"] = VideoCache(self._cache.max_bytes)
        state["_synthetic"] = {}
        return state

    def _video_array(self, clip: _Clip) -> np.ndarray:
        if clip.kind == "synthetic":
            arr = self._synthetic.get(clip.seed)
            if arr is None:
                from videomac.synthetic import render_video

                arr = render_video(clip.seed, clip.num_frames, self.synthetic_size)[0]
                self._synthetic[clip.seed] = arr
            return arr
        arr = self._cache.get(clip.path)
        if arr is None:
            arr, err = _decode_video(clip.path, self.video_short_side)
            # Packets counted at construction can outnumber decodable frames (truncated files).
            n, why = len(arr), f" ({err})" if err else ""
            if n < self.gap + 1:
                raise OSError(f"{n} decodable frame{'s' * (n != 1)} < gap+1={self.gap + 1}{why}")
            if err is not None or n != clip.num_frames:
                self._warn_once(clip.path, f"decoded {n} of {clip.num_frames} frames{why}", record=False)
            clip.num_frames = n
            self._cache.put(clip.path, arr)
        return arr

    def _warn_once(self, path: str, reason: str, record: bool = True) -> None:
        if record:
            self.skipped[path] = reason
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"FramePairDataset: {path}: {reason}", stacklevel=3)

    def _load_pair(self, clip: _Clip, t: Optional[int]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Frames ``t`` and ``t + gap`` (``t=None``: a random valid ``t``), or ``None`` if that pair is unusable.

        Failures are recorded here: an image that fails to decode is marked bad in this process (no pair
        uses it again), a video that fails to decode is marked dead.
        """
        g = self.gap
        if clip.kind == "dead":
            return None
        if clip.kind == "frames":
            if t is None:
                if clip.bad:
                    valid = [s for s in range(len(clip.frames) - g) if s not in clip.bad and s + g not in clip.bad]
                    if not valid:
                        return None
                    t = valid[int(torch.randint(0, len(valid), (1,)).item())]
                else:
                    t = int(torch.randint(0, len(clip.frames) - g, (1,)).item())
            elif t in clip.bad or t + g in clip.bad:
                return None
            imgs = []
            for k in (t, t + g):
                try:
                    imgs.append(_read_image(clip.frames[k]))
                except Exception as e:
                    clip.bad.add(k)
                    self._warn_once(clip.frames[k], f"failed to decode ({type(e).__name__}: {str(e)[:80]})")
                    return None
            a, b = imgs
            if a.shape != b.shape:  # rare in real data; the shared crop needs equal sizes
                b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BICUBIC))
            return a, b
        try:
            arr = self._video_array(clip)
        except Exception as e:
            self._warn_once(clip.path, f"failed to decode ({type(e).__name__}: {str(e)[:80]})")
            clip.kind = "dead"
            return None
        if t is None:
            t = int(torch.randint(0, len(arr) - g, (1,)).item())
        elif t + g >= len(arr):  # decoded fewer frames than counted
            return None
        return arr[t], arr[t + g]

    def _transform(self, a: np.ndarray, b: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        H, W = a.shape[:2]
        i, j, h, w = random_resized_crop_params(H, W, self.scale, self.ratio)
        flip = bool(torch.rand(1).item() < self.hflip)
        x = torch.from_numpy(np.stack([a[i : i + h, j : j + w], b[i : i + h, j : j + w]]))
        x = x.permute(0, 3, 1, 2).float()
        if (h, w) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0, 255)  # bicubic overshoots; PIL would clip to uint8 too
        if flip:
            x = x.flip(-1)
        x = (x / 255.0 - self._mean) / self._std
        return x[0].contiguous(), x[1].contiguous()

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        total = len(self)
        c, t = self.locate(index)
        walked = 0
        while walked < total:
            clip = self.clips[c]
            pair = self._load_pair(clip, t)
            if pair is not None:
                return self._transform(*pair)
            # Unusable: take the next index's pair, skipping whole clips that cannot give one.
            step = 1
            if t is not None and (clip.kind == "dead" or (clip.kind != "frames" and t + self.gap >= clip.num_frames)):
                step = self._offsets[c + 1] - index
            index, walked = (index + step) % total, walked + step
            c, t = self.locate(index)
        raise RuntimeError(f"FramePairDataset: no decodable video left (skipped: {len(self.skipped)})")
