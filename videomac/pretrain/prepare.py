"""``videomac prepare``: a pre-resized copy of a dataset, for loaders that would otherwise decode far more
pixels than a 224 x 224 crop needs.

Frame folders are copied with every frame resized to ``short_side`` (JPEG, ``quality``; frames already
that small are copied byte for byte). Video files become frame folders (default) or are re-encoded as
short-GOP H.264 MP4s (``videos="mp4"``: a keyframe every ``gop`` frames, so seeking decodes few frames).
SRC is only read. Each item is written under a temporary name and renamed when complete, so an
interrupted run resumes where it stopped: finished items are skipped, half-written ones redone.

Every item has its own destination: items that would share one (``clip/``, ``clip.mp4`` and ``clip.webm``
all become ``DST/clip``) are refused before anything is written, naming them, since keeping one and
skipping the rest as "already done" would silently lose videos.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

from PIL import Image

from videomac.files import atomic_file, stale_temporaries
from videomac.media import IMAGE_EXTS, JPEG_EXTS, VIDEO_EXTS, image_to_rgb, is_video, list_frames
from videomac.outputs import check_outputs
from videomac.pretrain.sources import frames_root

__all__ = ["destination", "prepare_dataset", "list_items"]

_PARTIAL = ".partial-"


def list_items(src: str) -> List[Tuple[str, str, str]]:
    """``(kind, path, name)`` for each frame folder / video file of ``src`` (the layouts
    :class:`~videomac.pretrain.data.FramePairDataset` reads: a folder of frame folders or videos,
    ``JPEGImages[/480p]``, a single video or frame folder)."""
    if os.path.isfile(src):
        if not is_video(src):
            raise ValueError(f"prepare: {src} is not a video file ({' '.join(VIDEO_EXTS)}) or a folder")
        return [("video", src, os.path.basename(src))]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"prepare: {src} not found")
    root = frames_root(src)
    if list_frames(root):
        return [("frames", root, os.path.basename(os.path.normpath(root)))]
    out = []
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        if os.path.isdir(p) and list_frames(p):
            out.append(("frames", p, name))
        elif is_video(name):
            out.append(("video", p, name))
    return out


def _target(w: int, h: int, short_side: int) -> Tuple[int, int]:
    if min(w, h) <= short_side:
        return w, h
    s = short_side / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _resize_image(src: str, dst_dir: str, short_side: int, quality: int) -> None:
    with Image.open(src) as im:
        w, h = im.size
        tw, th = _target(w, h, short_side)
        name = os.path.basename(src)
        if (tw, th) == (w, h):
            shutil.copyfile(src, os.path.join(dst_dir, name))
            return
        if im.format == "JPEG":
            im.draft("RGB", (tw, th))  # DCT-scaled decode to at least the target size
        # 16-bit frames are scaled to 8 bits (convert("RGB") would clip them nearly all white)
        im = Image.fromarray(image_to_rgb(im, src)).resize((tw, th), Image.BICUBIC, reducing_gap=3.0)
        if name.lower().endswith(JPEG_EXTS):
            im.save(os.path.join(dst_dir, name), quality=quality)
        else:
            im.save(os.path.join(dst_dir, name))


def _video_to_frames(src: str, dst_dir: str, short_side: int, quality: int) -> int:
    import av

    n = 0
    with av.open(src) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            tw, th = _target(frame.width, frame.height, short_side)
            img = (
                frame.to_image()
                if (tw, th) == (frame.width, frame.height)
                else frame.reformat(width=tw, height=th, format="rgb24", interpolation="AREA").to_image()
            )
            img.save(os.path.join(dst_dir, f"{n:05d}.jpg"), quality=quality)
            n += 1
    if n == 0:
        raise ValueError("no frame decoded")
    return n


def _video_to_mp4(src: str, dst: str, short_side: int, gop: int) -> int:
    import av

    n = 0
    with av.open(src) as c, av.open(dst, "w", format="mp4") as out:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        enc = None
        for frame in c.decode(stream):
            tw, th = _target(frame.width, frame.height, short_side)
            tw, th = tw - tw % 2, th - th % 2  # yuv420p
            if enc is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                rate = stream.average_rate or 25
                enc = out.add_stream(codec, rate=rate)
                enc.width, enc.height, enc.pix_fmt = tw, th, "yuv420p"
                if codec == "libx264":
                    enc.options = {
                        "crf": "18",
                        "preset": "veryfast",
                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                    }
                else:
                    enc.options = {"g": str(gop), "qscale": "3"}
            f = frame.reformat(width=tw, height=th, format="yuv420p", interpolation="AREA")
            f.pts = None
            for p in enc.encode(f):
                out.mux(p)
            n += 1
        if enc is None:
            raise ValueError("no frame decoded")
        for p in enc.encode():
            out.mux(p)
    return n


def destination(kind: str, name: str, videos: str) -> str:
    """The name an item gets under DST: frame folders keep theirs, videos lose their extension
    (``videos="frames"``) or get ``.mp4``."""
    if kind == "frames":
        return name
    stem = os.path.splitext(name)[0]
    return stem if videos == "frames" else stem + ".mp4"


def _check_unique(items: List[Tuple[str, str, str]], videos: str) -> None:
    by_dst: Dict[str, List[str]] = {}
    for kind, _, name in items:
        by_dst.setdefault(destination(kind, name, videos), []).append(name + ("/" if kind == "frames" else ""))
    clashes = [f"{', '.join(srcs)} -> {dst}" for dst, srcs in by_dst.items() if len(srcs) > 1]
    if clashes:
        raise ValueError(
            f"prepare: items of SRC would be written to the same destination ({'; '.join(clashes[:5])}"
            f"{f' and {len(clashes) - 5} more' if len(clashes) > 5 else ''}); rename all but one of each, "
            "or prepare them into different DST folders"
        )


def _clear_partials(dst: str, final_name: str) -> None:
    """Remove what an interrupted run left of this item (its ``.partial-<name>*`` temporaries)."""
    pattern = re.compile(re.escape(_PARTIAL + final_name) + r"(-[A-Za-z0-9_]+)?$")
    for n in os.listdir(dst):
        p = os.path.join(dst, n)
        if pattern.fullmatch(n):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)


def _prepare_one(job) -> Tuple[str, Optional[str]]:
    kind, path, name, dst, short_side, videos, quality, gop = job
    final = os.path.join(dst, destination(kind, name, videos))
    if os.path.exists(final):
        return name, "exists"
    _clear_partials(dst, os.path.basename(final))
    tmp = None
    try:
        if kind == "video" and videos == "mp4":
            with atomic_file(final) as f:
                _video_to_mp4(path, f, short_side, gop)
            return name, None
        # exclusive, unique: nothing planted at a predictable name is written through
        tmp = tempfile.mkdtemp(dir=dst, prefix=_PARTIAL + os.path.basename(final) + "-")
        if kind == "frames":
            for f in list_frames(path):
                _resize_image(f, tmp, short_side, quality)
        else:
            _video_to_frames(path, tmp, short_side, quality)
        os.replace(tmp, final)
    except Exception as e:  # one bad item must not stop the copy: reported, retried on the next run
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return name, f"failed: {type(e).__name__}: {str(e)[:100]}"
    return name, None


def prepare_dataset(
    src: str,
    dst: str,
    short_side: int = 360,
    videos: str = "frames",
    quality: int = 90,
    gop: int = 8,
    workers: int = 1,
    progress: bool = True,
) -> Dict:
    """Write a copy of ``src`` into ``dst`` with frames resized to ``short_side`` (see the module doc).
    Returns ``{"done": n, "skipped": n (already there), "failed": {name: reason}}``."""
    if videos not in ("frames", "mp4"):
        raise ValueError(f"videos must be 'frames' or 'mp4', got {videos!r}")
    if short_side < 1 or not 1 <= quality <= 100 or gop < 1:
        raise ValueError("short_side and gop must be >= 1, quality in 1..100")
    check_outputs([src], folders={"DST": dst})
    items = list_items(src)
    if not items:
        raise ValueError(f"prepare: no frame folders or video files under {src} ({' '.join(IMAGE_EXTS + VIDEO_EXTS)})")
    _check_unique(items, videos)
    os.makedirs(dst, exist_ok=True)
    for leftover in stale_temporaries(dst):  # MP4s of killed runs (frame folders: see _clear_partials)
        os.remove(leftover)
    jobs = [(k, p, n, dst, short_side, videos, quality, gop) for k, p, n in items]
    from tqdm import tqdm

    result: Dict = dict(done=0, skipped=0, failed={})
    bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress, dynamic_ncols=True)
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                outcomes = pool.map(_prepare_one, jobs)
                for name, status in outcomes:
                    _count(result, name, status)
                    bar.update(1)
        else:
            for job in jobs:
                _count(result, *_prepare_one(job))
                bar.update(1)
    finally:
        bar.close()
    return result


def _count(result: Dict, name: str, status: Optional[str]) -> None:
    if status is None:
        result["done"] += 1
    elif status == "exists":
        result["skipped"] += 1
    else:
        result["failed"][name] = status
