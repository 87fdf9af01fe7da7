"""Finding the videos of a pretraining source: frame folders, video files, text lists of either.

:func:`find_clips` turns a ``--data`` source into clips (:mod:`videomac.pretrain.clips`), checking
each candidate cheaply -- frame headers, a video's packet count -- and recording what it skips, with
the reason, in a ``skipped`` dict (path -> reason) rather than stopping.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Set, Tuple

from PIL import Image

from videomac.frames import probe_video
from videomac.media import IMAGE_EXTS, VIDEO_EXTS, is_video, list_frames
from videomac.pretrain.clips import Clip, FrameFolderClip, VideoFileClip, short_name

__all__ = ["MAX_FULL_DECODE_PIXELS", "describe_source", "find_clips", "frames_root", "report_skipped"]

# Frames other than JPEGs (decoded reduced) are decoded in full: above this many pixels (8K UHD is 33.2 MP)
# one pair costs seconds and gigabytes per worker, so such frames are skipped, and counted, at construction.
MAX_FULL_DECODE_PIXELS = 40_000_000


def frames_root(folder: str) -> str:
    """Where a dataset folder's videos are: ``JPEGImages/480p`` or ``JPEGImages`` (DAVIS, YouTube-VOS
    layouts) when it has one, else the folder itself."""
    for sub in (os.path.join("JPEGImages", "480p"), "JPEGImages"):
        if os.path.isdir(os.path.join(folder, sub)):
            return os.path.join(folder, sub)
    return folder


def describe_source(source) -> str:
    """How logs and messages name ``source``."""
    if source is None:
        return "synthetic videos"
    if isinstance(source, (list, tuple)):
        return f"a list of {len(source)} path(s)"
    return str(source)


def find_clips(
    source, gap: int, short_side: Optional[int], skipped: Dict[str, str], stacklevel: int = 2
) -> Tuple[str, List[Clip]]:
    """``(kind of source, clips)`` of ``source``: a folder of frame folders or videos (``JPEGImages``
    layouts too), a text list of paths, one video file or frame folder, or a list of paths. What cannot
    be used is recorded in ``skipped``; a list naming one video twice uses it once, with a warning."""
    kind, candidates = _resolve(source)
    paths = _unique(candidates, describe_source(source), stacklevel + 1)
    return kind, [c for c in (_probe(p, gap, short_side, skipped) for p in paths) if c is not None]


def report_skipped(skipped: Dict[str, str], clips: List[Clip], where: str, gap: int, stacklevel: int = 2) -> None:
    """One warning listing what was skipped; a ``ValueError`` if no clip is left."""
    if skipped:
        names = [f"{short_name(p)} ({r})" for p, r in list(skipped.items())[:20]]
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(
            f"FramePairDataset: skipped {len(skipped)} unusable item(s) in {where}: " + "; ".join(names) + more,
            stacklevel=stacklevel + 1,
        )
    if not clips:
        reasons = "; ".join(f"{short_name(p)}: {r}" for p, r in list(skipped.items())[:20])
        detail = f"{len(skipped)} skipped ({reasons})" if skipped else "nothing found"
        raise ValueError(
            f"no usable videos under {where}: {detail}. Expected frame folders "
            f"(<video>/<frame>{'|'.join(IMAGE_EXTS)}) or video files ({' '.join(VIDEO_EXTS)}) "
            f"with at least gap+1={gap + 1} frames."
        )


def _resolve(source) -> Tuple[str, List[str]]:
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
        return "list file", _read_list(source)
    root = frames_root(source)
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


def _read_list(path: str) -> List[str]:
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


def _unique(paths: List[str], where: str, stacklevel: int) -> List[str]:
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
        names = ", ".join(short_name(p) for p in repeats[:10]) + more
        warnings.warn(
            f"FramePairDataset: {where} lists {len(repeats)} video(s) more than once; each is used once: {names}",
            stacklevel=stacklevel + 1,
        )
    return out


def _probe(path: str, gap: int, short_side: Optional[int], skipped: Dict[str, str]) -> Optional[Clip]:
    """Validate one candidate cheaply; returns a clip or records why it was skipped."""
    if not os.path.exists(path):
        skipped[path] = "not found"
    elif os.path.isdir(path):
        return _probe_folder(path, gap, skipped)
    elif not os.path.isfile(path):  # opening a FIFO would block forever
        skipped[path] = "not a regular file (a FIFO, socket or device)"
    elif is_video(path):
        return _probe_video(path, gap, short_side, skipped)
    else:
        skipped[path] = "not a frame folder or video file"
    return None


def _probe_folder(path: str, gap: int, skipped: Dict[str, str]) -> Optional[FrameFolderClip]:
    """Check the folder's frame headers (decoding every frame is too slow)."""
    try:
        frames, bad = list_frames(path), set()
    except ValueError as e:  # two files for one frame index: which is the frame is unknown
        skipped[path] = str(e).removeprefix(f"{path}: ")
        return None
    for k, f in enumerate(frames):
        reason = _unusable_frame(f)
        if reason:
            bad.add(k)
            skipped[f] = reason
    n = len(frames) - len(bad)
    if n < gap + 1:
        skipped[path] = f"{_frames_word(n)} < gap+1={gap + 1}"
        return None
    clip = FrameFolderClip(path, frames, bad, gap)
    if clip.num_pairs == 0:
        skipped[path] = f"no two readable frames gap={gap} apart"
        return None
    return clip


def _unusable_frame(f: str) -> Optional[str]:
    """Why the frame image ``f`` cannot be used, from its header; ``None`` if it can."""
    if not os.path.isfile(f):
        return "not a regular file (a FIFO, socket or device)"
    try:
        with Image.open(f) as im:
            (w, h), fmt = im.size, im.format
    except Exception as e:
        return f"unreadable image ({type(e).__name__})"
    if fmt != "JPEG" and w * h > MAX_FULL_DECODE_PIXELS:
        return (
            f"{w}x{h} {fmt} frame above the {MAX_FULL_DECODE_PIXELS / 1e6:g} MP limit for frames "
            "decoded in full; downscale it (or use JPEG, decoded reduced)"
        )
    return None


def _probe_video(path: str, gap: int, short_side: Optional[int], skipped: Dict[str, str]) -> Optional[VideoFileClip]:
    """Count the frames without decoding (:func:`videomac.frames.probe_video`)."""
    try:
        n, keys, hw = probe_video(path)
    except Exception as e:
        skipped[path] = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
        return None
    if n < gap + 1:
        skipped[path] = f"{_frames_word(n)} < gap+1={gap + 1}"
        return None
    return VideoFileClip(path, n, keys, _scaled_hw(hw, short_side), gap)


def _scaled_hw(hw: Tuple[int, int], short_side: Optional[int]) -> Tuple[int, int]:
    h, w = hw
    if short_side and min(h, w) > short_side:
        s = short_side / min(h, w)
        return max(1, round(h * s)), max(1, round(w * s))
    return h, w


def _frames_word(n: int) -> str:
    return f"{n} frame{'s' * (n != 1)}"
