"""Reading the frames of a video file or a folder of frame images: the one frame reader of videomac.

:class:`FrameReader` serves pretraining (frames by number, decoding forward from the nearest keyframe),
evaluation and propagation (every frame in order, streamed) and ``videomac visualize`` (every frame a
packet-by-packet decode gets). Video frames are found by timestamp through a :class:`VideoIndex` read
from the packets without decoding, so a frame from seeking is the frame a full decode gives; a file
that seeks badly, or whose packets carry no timestamps, is decoded from the start, counting frames.
Frames come out as ``(H, W, 3)`` uint8 RGB (16-bit images scaled to 8 bits, see
:func:`videomac.media.image_to_rgb`).
"""

from __future__ import annotations

import bisect
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from videomac.media import IMAGE_EXTS, image_to_rgb, list_frames

__all__ = [
    "FrameReader",
    "SeekError",
    "VideoIndex",
    "indexed_frames",
    "probe_video",
    "resize_frame",
    "video_frame_rgb",
]


_INDEXED_FORMATS = ("mov", "mp4")  # sample tables list every frame, read at open without demuxing


def indexed_frames(container, stream, file_size: int) -> Optional[Tuple[int, List[int]]]:
    """``(frames, keyframe positions)`` from the container's index (mp4 / mov), or ``None`` where it
    cannot be trusted.

    ``stream.frames`` alone is not exact: an edit list can mark leading samples as discarded (the decoder
    drops them), so the count skips index entries flagged discard, as the decoder does. The index is used
    only when it lists every sample (``len == stream.frames``; fragmented mp4 fails this) and every sample
    lies inside the file (a truncated file fails this). Keyframe positions are in decode order, which is
    where a seek would start: close to the frames a unit of pairs needs, not necessarily exact.
    """
    if not set(container.format.name.split(",")) & set(_INDEXED_FORMATS) or stream.frames <= 0:
        return None
    entries = getattr(stream, "index_entries", None)  # PyAV >= 14
    if entries is None or len(entries) != stream.frames:
        return None
    n, keys = 0, []
    for e in entries:
        if e.pos < 0 or e.pos + e.size > file_size:
            return None
        if e.size > 0 and not e.is_discard:
            if e.is_keyframe:
                keys.append(n)
            n += 1
    return n, keys


def probe_video(path: str) -> Tuple[int, List[int], Tuple[int, int]]:
    """``(frames a full decode yields, keyframe positions, (height, width))`` without decoding.

    mp4 / mov: from the container's sample index (no packet is read). Other containers (mkv / webm
    index keyframes only; avi's index is optional): by demuxing every packet, still without decoding.
    Packets flagged discard (edit lists) and empty packets yield no frame and are not counted.
    """
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        hw = (stream.codec_context.height, stream.codec_context.width)
        got = indexed_frames(container, stream, os.path.getsize(path))
        if got is not None:
            return got[0], got[1], hw
        n, keys = 0, []
        for p in container.demux(stream):
            if p.size > 0 and not p.is_discard:
                if p.is_keyframe:
                    keys.append(n)
                n += 1
        return n, keys, hw


@dataclass
class VideoIndex:
    """Frame ``k`` of a full decode has presentation timestamp ``pts[k]`` (sorted, unique); ``keys``
    are the timestamps of keyframes (sorted). ``pts`` is ``None`` when the packets carry no usable
    timestamps: frames are then identified by counting from the start."""

    pts: Optional[np.ndarray]
    keys: np.ndarray
    num_frames: int

    @classmethod
    def read(cls, path: str) -> VideoIndex:
        """Demux every packet (no decoding): the frames' timestamps and the keyframes'."""
        import av

        pts, keys, n, usable = [], [], 0, True
        with av.open(path) as container:
            stream = container.streams.video[0]
            try:
                for p in container.demux(stream):
                    if p.size <= 0 or p.is_discard:
                        continue
                    n += 1
                    if p.pts is None:
                        usable = False
                        continue
                    pts.append(p.pts)
                    if p.is_keyframe:
                        keys.append(p.pts)
            except av.error.FFmpegError:  # a damaged tail: the frames before it still count
                pass
        arr = np.sort(np.asarray(pts, dtype=np.int64))
        if not usable or not keys or len(np.unique(arr)) != len(arr):
            return cls(None, np.zeros(0, np.int64), n)
        return cls(arr, np.sort(np.asarray(keys, dtype=np.int64)), n)

    @property
    def seekable(self) -> bool:
        return self.pts is not None

    def keyframe_before(self, k: int) -> Optional[int]:
        """Timestamp of the last keyframe at or before frame ``k`` (``None``: none, start of stream)."""
        i = bisect.bisect_right(self.keys.tolist(), int(self.pts[k])) - 1 if self.seekable else -1
        return int(self.keys[i]) if i >= 0 else None


class SeekError(RuntimeError):
    """Seeking did not land at or before the wanted frame (the caller decodes from the start)."""


def video_frame_rgb(frame, out_hw: Optional[Tuple[int, int]]) -> np.ndarray:
    """An ``av.VideoFrame`` as uint8 RGB ``(H, W, 3)``, resized to ``out_hw`` with an area filter if
    given (one swscale pass: conversion and downscale together)."""
    if out_hw is None or (out_hw[0] == frame.height and out_hw[1] == frame.width):
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=out_hw[1], height=out_hw[0], format="rgb24", interpolation="AREA").to_ndarray()


def resize_frame(frame: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(H, W, 3)`` uint8 frame to ``size = (h, w)`` (no-op when equal)."""
    if frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def _chain(first, rest):
    yield first
    yield from rest


class FrameReader:
    """Frames of a video file or a folder of images, decoded lazily as ``(H, W, 3)`` uint8 RGB.

    Opening validates the source: a missing path raises ``FileNotFoundError``; a file PyAV cannot open,
    one without a video stream, one whose first frame does not decode, or an empty folder raise
    ``ValueError``. ``size`` ``(H, W)``, ``num_frames`` (None when the container does not say) and
    ``fps`` (25 for folders) are known after opening. ``index``: a :class:`VideoIndex` already read (as
    pretraining reads one per video); the file is then opened without decoding anything.

    - :meth:`read` ``(k, size)``: frame ``k`` by number. Ascending numbers continue decoding where the
      last call stopped (unless a keyframe lies between, then it seeks); a number behind the position
      seeks back. A seek that does not land at or before frame ``k`` (:class:`SeekError`) switches the
      file's index to counting from the start, for good. ``None`` when the stream ends first.
    - Iterating (:meth:`indexed` also gives each frame's position) skips frames that fail to decode,
      after the first (the first frame is the one a mask belongs to, so it must decode, else
      ``ValueError``), with one warning each; a video's damaged tail ends it. ``skipped`` lists
      ``(path, reason)``. Folder frames must share one size.
    - :meth:`decode_packets`: a video decoded packet by packet, so a corrupt packet loses only its own
      frames.

    Keeps a video open for :meth:`read` until :meth:`close` (or the ``with`` block ends).
    """

    def __init__(
        self, source: str, index: Optional[VideoIndex] = None, threads: int = 1, first_must_decode: bool = True
    ):
        self.source = self.path = os.fspath(source)
        self.skipped: List[Tuple[str, str]] = []
        self.threads = max(1, int(threads))
        self._index = index
        self._container = self._it = self._pos = None  # _pos: timestamp of the last frame decoded
        self._count = 0  # frames decoded from the start (without timestamps)
        self.paths: Optional[List[str]] = None
        if index is not None:
            self._open()
            self.size = (self._stream.codec_context.height, self._stream.codec_context.width)
            self.num_frames: Optional[int] = index.num_frames
            self.fps = float(self._stream.average_rate or 25)
            return
        if not os.path.exists(self.source):
            raise FileNotFoundError(f"video not found: {source} (expected a video file or a folder of frames)")
        if os.path.isdir(self.source):
            self._open_folder()
        else:
            self._check_video(first_must_decode)

    def _open_folder(self) -> None:
        self.paths = list_frames(self.source)
        if not self.paths:
            raise ValueError(f"{self.source}: folder holds no frames (expected images {', '.join(IMAGE_EXTS)})")
        try:
            with Image.open(self.paths[0]) as im:
                self.size = (im.height, im.width)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(
                f"cannot read the first frame {self.paths[0]} ({type(e).__name__}: {e}); the mask belongs to it"
            ) from e
        self.num_frames = len(self.paths)
        self.fps = 25.0

    def _check_video(self, first_must_decode: bool) -> None:
        """``first_must_decode``: the first frame is the one a mask belongs to; a reader that only samples
        frames (visualize) takes the size from the stream and lets :meth:`decode_packets` skip what fails."""
        import av

        has_video, first = False, None
        try:
            with av.open(self.source) as container:
                if container.streams.video:
                    has_video = True
                    stream = container.streams.video[0]
                    self.num_frames = int(stream.frames) or None
                    self.fps = float(stream.average_rate or 25)
                    if not first_must_decode:
                        self.size = (stream.codec_context.height, stream.codec_context.width)
                        return
                    # Decode one frame now so a corrupt file fails here, with a clear message.
                    first = next(container.decode(stream), None)
        except Exception as e:  # PyAV raises many error types (some are ValueErrors) for damaged files
            raise ValueError(
                f"cannot read video {self.source}: {e} (expected a video PyAV decodes, or a folder of frames)"
            ) from e
        if not has_video:
            raise ValueError(f"{self.source}: no video stream (expected a video such as .mp4 or .webm)")
        if first is None:
            raise ValueError(f"{self.source}: the video has no decodable frames")
        self.size = (first.height, first.width)

    def _open(self) -> None:
        import av

        self._container = av.open(self.source)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO" if self.threads > 1 else "NONE"
        self._stream.codec_context.thread_count = self.threads

    @property
    def index(self) -> VideoIndex:
        """The video's :class:`VideoIndex` (read on first use unless given)."""
        if self._index is None:
            self._index = VideoIndex.read(self.source)
        return self._index

    def close(self) -> None:
        self._it = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------- by number
    def read(self, k: int, size: Optional[Tuple[int, int]] = None) -> Optional[np.ndarray]:
        """Frame ``k`` as uint8 RGB, area-resized to ``size`` ``(h, w)`` if given; ``None`` past the end."""
        if self.paths is not None:
            if k >= len(self.paths):
                return None
            with Image.open(self.paths[k]) as im:
                a = image_to_rgb(im, self.paths[k])
            if size is None or a.shape[:2] == tuple(size):
                return a
            return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.BOX))
        if self._container is None:
            self._open()
        frame = self._frame(k)
        return None if frame is None else video_frame_rgb(frame, size)

    def _frame(self, k: int):
        if self.index.seekable:
            try:
                return self._read_seeking(k)
            except SeekError:
                self.index.pts = None  # this file seeks badly: count frames from the start from now on
                self._it = None
        return self._read_counting(k)

    def _read_seeking(self, k: int):
        if k >= len(self.index.pts):  # past the last frame a full decode yields
            return None
        target = int(self.index.pts[k])
        key = self.index.keyframe_before(k)
        if self._it is None or self._pos is None or self._pos >= target or (key is not None and key > self._pos):
            self._seek(k, key)
        for frame in self._it:
            self._pos = frame.pts
            if frame.pts is None:
                raise SeekError("decoded frame without timestamp")
            if frame.pts == target:
                return frame
            if frame.pts > target:
                raise SeekError(f"frame {k} (pts {target}) not found; next decoded pts {frame.pts}")
        self._it = None
        return None

    def _read_counting(self, k: int):
        if self._it is None or self._count > k:
            self._container.seek(0, backward=True, any_frame=False)
            self._it, self._count = iter(self._container.decode(self._stream)), 0
        for frame in self._it:
            self._count += 1
            if self._count == k + 1:
                return frame
        self._it = None
        return None

    def _seek(self, k: int, key: Optional[int]) -> None:
        """Seek to ``key`` (or the stream's start) and check that decoding starts at or before frame
        ``k``; falls back to two earlier keyframes, then to the start."""
        target = int(self.index.pts[k])
        keys = [int(x) for x in self.index.keys if key is not None and x <= key]
        candidates = ([key] if key is not None else []) + keys[::-1][1:3] + [None]
        for ts in candidates:
            if ts is None:
                self._container.seek(0, backward=True, any_frame=False)
            else:
                self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)
            frames = iter(self._container.decode(self._stream))
            first = next(frames, None)
            if first is not None and first.pts is not None and first.pts <= target:
                self._it, self._pos = _chain(first, frames), None
                return
        raise SeekError(f"no seek position at or before frame {k}")

    # -------------------------------------------------------------------------------- in order
    def __iter__(self) -> Iterator[np.ndarray]:
        for _, frame in self.indexed():
            yield frame

    def indexed(self) -> Iterator[Tuple[int, np.ndarray]]:
        """``(position, frame)``: the position among the folder's images (or decoded frames), which
        differs from the count of frames yielded once a frame was skipped."""
        self.skipped = []
        if self.paths is not None:
            yield from self._folder_frames()
            return
        import av

        with av.open(self.source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            n = 0
            try:
                for frame in container.decode(stream):
                    yield n, frame.to_ndarray(format="rgb24")
                    n += 1
            except av.error.FFmpegError as e:
                # A truncated or damaged tail: keep what was decoded, say where it stopped.
                self.skipped.append((self.source, f"decoding stopped after {n} frames: {e}"))
                warnings.warn(f"{self.source}: decoding stopped after {n} frames: {e}", stacklevel=2)

    def _folder_frames(self) -> Iterator[Tuple[int, np.ndarray]]:
        for k, p in enumerate(self.paths):
            try:
                with Image.open(p) as im:
                    frame = image_to_rgb(im, p)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                reason = f"{type(e).__name__}: {e}"
                if k == 0:
                    raise ValueError(f"cannot read the first frame {p} ({reason}); the mask belongs to it") from e
                self.skipped.append((p, reason))
                warnings.warn(f"skipping unreadable frame {p} ({reason})", stacklevel=3)
                continue
            if frame.shape[:2] != self.size:
                raise ValueError(
                    f"{p} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                    f"{self.size[1]}x{self.size[0]}: all frames must have one size"
                )
            yield k, frame

    def decode_packets(self, on_frame: Callable[[object], None]) -> List[Optional[int]]:
        """Demux the video stream, decoding packet by packet so that a corrupt packet loses only its own
        frames; ``on_frame(av_frame)`` for each frame that decodes. Returns every packet's pts (its
        frame's place)."""
        import av

        pts = []
        with av.open(self.source) as c:
            stream = c.streams.video[0]
            for packet in c.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
                try:
                    for frame in packet.decode():
                        on_frame(frame)
                except (av.error.FFmpegError, ValueError):
                    continue
        return pts
