"""Streaming video input/output for propagation on arbitrary videos.

:class:`FrameReader` yields the frames of a video file (any container PyAV decodes: mp4, webm, mkv,
avi, mov, ...) or of a folder of images one at a time, so long videos never sit in memory. A frame
that does not decode (truncated or corrupt image, damaged video tail) is skipped with a warning and
recorded in :attr:`FrameReader.skipped`; 16-bit images are scaled to 8 bits, not clipped.
:class:`VideoWriter` encodes frames as they come (h264, else mpeg4). First-frame masks are read by
:func:`videomac.eval.annotations.read_mask`.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from videomac.files import atomic_file
from videomac.media import IMAGE_EXTS, VIDEO_EXTS, image_to_rgb, list_frames

__all__ = ["VIDEO_EXTS", "IMAGE_EXTS", "FrameReader", "VideoWriter", "resize_frame", "image_to_rgb"]

_MUXERS = {"mkv": "matroska", "m4v": "mp4", "mpg": "mpeg"}  # PyAV muxer names that are not the extension


def resize_frame(frame: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(H, W, 3)`` uint8 frame to ``size = (h, w)`` (no-op when equal)."""
    if frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


class FrameReader:
    """Frames of a video file or an image folder, decoded lazily as ``(H, W, 3)`` uint8 RGB.

    Opening validates the source: a missing path raises ``FileNotFoundError``; a file PyAV cannot
    open, one without a video stream, an empty folder or frames of differing sizes raise
    ``ValueError``. ``size`` ``(H, W)`` and ``num_frames`` (None when the container does not say)
    are known after opening; ``fps`` defaults to 25 for folders.

    Iterating skips frames that fail to decode (after the first: the first frame is the one a mask
    belongs to, so it must decode, else ``ValueError``) with one warning each; ``skipped`` lists
    ``(path, reason)``. :meth:`indexed` also yields each frame's position among the folder's images.
    """

    def __init__(self, source: str):
        self.source = source
        self.skipped: List[Tuple[str, str]] = []
        if not os.path.exists(source):
            raise FileNotFoundError(f"video not found: {source} (expected a video file or a folder of frames)")
        self.paths = None
        if os.path.isdir(source):
            self.paths = list_frames(source)
            if not self.paths:
                raise ValueError(f"{source}: folder holds no frames (expected images {', '.join(IMAGE_EXTS)})")
            with Image.open(self.paths[0]) as im:
                self.size = (im.height, im.width)
            self.num_frames: Optional[int] = len(self.paths)
            self.fps = 25.0
            return
        import av

        has_video, first = False, None
        try:
            with av.open(source) as container:
                if container.streams.video:
                    has_video = True
                    stream = container.streams.video[0]
                    self.num_frames = int(stream.frames) or None
                    self.fps = float(stream.average_rate or 25)
                    # Decode one frame now so a corrupt file fails here, with a clear message.
                    first = next(container.decode(stream), None)
        except Exception as e:  # PyAV raises many error types (some are ValueErrors) for damaged files
            raise ValueError(
                f"cannot read video {source}: {e} (expected a video PyAV decodes, or a folder of frames)"
            ) from e
        if not has_video:
            raise ValueError(f"{source}: no video stream (expected a video such as .mp4 or .webm)")
        if first is None:
            raise ValueError(f"{source}: the video has no decodable frames")
        self.size = (first.height, first.width)

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, frame in self.indexed():
            yield frame

    def indexed(self) -> Iterator[Tuple[int, np.ndarray]]:
        """``(position, frame)``: the position among the folder's images (or decoded frames), which
        differs from the count of frames yielded once a frame was skipped."""
        self.skipped = []
        if self.paths is not None:
            for k, p in enumerate(self.paths):
                try:
                    with Image.open(p) as im:
                        frame = image_to_rgb(im, p)
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    reason = f"{type(e).__name__}: {e}"
                    if k == 0:
                        raise ValueError(f"cannot read the first frame {p} ({reason}); the mask belongs to it") from e
                    self.skipped.append((p, reason))
                    warnings.warn(f"skipping unreadable frame {p} ({reason})", stacklevel=2)
                    continue
                if frame.shape[:2] != self.size:
                    raise ValueError(
                        f"{p} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                        f"{self.size[1]}x{self.size[0]}: all frames must have one size"
                    )
                yield k, frame
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


class VideoWriter:
    """Encode ``(H, W, 3)`` uint8 frames one at a time to a video file with PyAV.

    h264 where this PyAV build has it, else mpeg4; yuv420p, so an odd width/height loses its last
    column/row. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str, fps: float = 25.0, crf: int = 20):
        from fractions import Fraction

        import av

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        # written beside the target and renamed over it on close (a link at ``path`` is replaced)
        self._atomic = atomic_file(path)
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        try:
            self._container = av.open(self._atomic.__enter__(), mode="w", format=_MUXERS.get(ext, ext or "mp4"))
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = None
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                self._stream = self._container.add_stream(codec, rate=rate)
                break
            except Exception:  # encoder missing from this PyAV build
                continue
        if self._stream is None:
            self._container.close()
            err = RuntimeError("PyAV has neither an h264 nor an mpeg4 encoder")
            self._atomic.__exit__(RuntimeError, err, None)  # removes the temporary
            raise err
        self._stream.pix_fmt = "yuv420p"
        if self._stream.codec_context.name in ("libx264", "h264"):
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            self._stream.bit_rate = 8_000_000
        self._hw: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        H, W = frame.shape[:2]
        if self._hw is None:
            self._hw = (H - H % 2, W - W % 2)
            self._stream.height, self._stream.width = self._hw
        h, w = self._hw
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w], dtype=np.uint8), format="rgb24")
        for packet in self._stream.encode(f):
            self._container.mux(packet)
        self.frames += 1

    def close(self, exc=(None, None, None)) -> None:
        """Finish the file and put it in place; with ``exc`` (an error while writing) discard it."""
        if self._container is None:
            return
        try:
            if self._hw is not None and exc[0] is None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as e:
            exc = (type(e), e, e.__traceback__)
            raise
        finally:
            self._container = None
            self._atomic.__exit__(*exc)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close(exc)
