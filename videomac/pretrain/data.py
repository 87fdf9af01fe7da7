"""Frame-pair data for VideoMAC pretraining.

:class:`FramePairDataset` yields ``(frame1, frame2)`` pairs ``gap`` frames apart from one video, with one
random-resized crop and one horizontal-flip decision shared by both frames (so the pair differs only by
the video's own motion). Sources: frame folders (YouTube-VOS / DAVIS layouts), video files decoded with
PyAV, a text list of either, or -- by default -- seeded synthetic videos from :mod:`videomac.synthetic`.

All randomness comes from torch's global RNG, so saving/restoring ``torch.get_rng_state()`` resumes the
sample stream exactly (``num_workers=0``) and DataLoader workers (seeded per worker by torch) get
distinct streams. Bad data is skipped and reported rather than stopping a run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

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
    kind: str  # "frames" | "video" | "synthetic"
    path: str = ""
    frames: List[str] = field(default_factory=list)
    num_frames: int = 0
    seed: int = 0


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def _list_images(folder: str) -> List[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    return [os.path.join(folder, n) for n in names]


def _count_video_frames(path: str) -> int:
    """Count frames by demuxing every packet (no decoding, so cheap at construction).

    Container metadata can lie for truncated files; packets that then fail to decode are caught on the
    first decode in :meth:`FramePairDataset.__getitem__`.
    """
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size > 0)


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

    Each item is one video (repeated ``pairs_per_video`` times per epoch; item ``i`` uses video
    ``i % num_videos``) and returns ``(frame1, frame2)``, float32 ``(3, H, W)`` ImageNet-normalized.

    ``source``: a folder of frame folders (``root/<video>/<frame>``, also ``root/JPEGImages[/480p]/...``),
    a folder of video files, a text file listing frame folders / video files (one per line, relative to
    the list, ``#`` comments), a single video file or frame folder, a list of such paths, or ``None`` for
    ``synthetic_videos`` seeded synthetic videos (rendered lazily, cached in memory per process).

    Unusable inputs are skipped and recorded in :attr:`skipped` (path -> reason) with one warning at
    construction; a frame that fails to decode later is recorded too (in that worker process), warned
    about once, and the item is replaced by the next index's pair. ``ratio`` is width/height as in
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
        pairs_per_video: int = 1,
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
        if int(pairs_per_video) < 1:
            raise ValueError(f"pairs_per_video must be >= 1, got {pairs_per_video}")
        self.gap = int(gap)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.pairs_per_video = int(pairs_per_video)
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
            self.clips = [
                _Clip(f"synthetic-{seed + i}", "synthetic", num_frames=int(synthetic_frames), seed=seed + i)
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
            frames = []
            for f in _list_images(path):
                try:
                    with Image.open(f):  # parses the header only: decoding every frame is too slow
                        pass
                    frames.append(f)
                except Exception as e:
                    self.skipped[f] = f"unreadable image ({type(e).__name__})"
            if len(frames) < need:
                self.skipped[path] = f"{len(frames)} frame{'s' * (len(frames) != 1)} < gap+1={need}"
                return None
            return _Clip(_short(path), "frames", path, frames, len(frames))
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
        return _Clip(_short(path), "video", path, num_frames=n)

    # ------------------------------------------------------------------------------------- loading
    @property
    def num_videos(self) -> int:
        return len(self.clips)

    @property
    def num_frames(self) -> int:
        return sum(c.num_frames for c in self.clips)

    def describe(self) -> str:
        """One line for logs: source kind, #videos, #frames, #skipped."""
        h, w = self.input_size
        return (
            f"FramePairDataset[{self.source_kind}] {self._where()}: {self.num_videos} videos, "
            f"{self.num_frames} frames, {len(self.skipped)} skipped; gap={self.gap}, "
            f"pairs/video={self.pairs_per_video}, input {h}x{w}"
        )

    def __len__(self) -> int:
        return len(self.clips) * self.pairs_per_video

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

    def _load_pair(self, clip: _Clip) -> Tuple[np.ndarray, np.ndarray]:
        if clip.kind == "frames":
            t = int(torch.randint(0, len(clip.frames) - self.gap, (1,)).item())
            paths = (clip.frames[t], clip.frames[t + self.gap])
            imgs = []
            for p in paths:
                try:
                    imgs.append(_read_image(p))
                except Exception as e:
                    # Drop the frame in this process so later draws avoid it.
                    self._warn_once(p, f"failed to decode ({type(e).__name__}: {str(e)[:80]})")
                    if p in clip.frames:
                        clip.frames.remove(p)
                    raise
            a, b = imgs
            if a.shape != b.shape:  # rare in real data; the shared crop needs equal sizes
                b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BICUBIC))
            return a, b
        arr = self._video_array(clip)
        t = int(torch.randint(0, len(arr) - self.gap, (1,)).item())
        return arr[t], arr[t + self.gap]

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
        n = len(self.clips)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        for k in range(n):
            clip = self.clips[(index + k) % n]
            if clip.kind == "dead" or (clip.kind == "frames" and len(clip.frames) < self.gap + 1):
                continue  # failed earlier in this process
            try:
                a, b = self._load_pair(clip)
            except Exception as e:
                if clip.kind != "frames":  # frame failures are recorded per file in _load_pair
                    self._warn_once(clip.path, f"failed to decode ({type(e).__name__}: {str(e)[:80]})")
                    clip.kind = "dead"
                continue
            return self._transform(a, b)
        raise RuntimeError(f"FramePairDataset: no decodable video left (skipped: {len(self.skipped)})")
