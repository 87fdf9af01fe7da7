"""Streaming video input/output for propagation on arbitrary videos.

Frames are read by :class:`videomac.frames.FrameReader` (re-exported here), the reader pretraining uses
too: a video file or a folder of images one frame at a time, so long videos never sit in memory, with
frames that do not decode skipped and recorded. :class:`VideoWriter` encodes frames as they come
(h264, else mpeg4). First-frame masks are read by
:func:`videomac.eval.annotations.read_mask`.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from videomac.files import atomic_file
from videomac.frames import FrameReader, resize_frame
from videomac.media import IMAGE_EXTS, VIDEO_EXTS, image_to_rgb

__all__ = ["VIDEO_EXTS", "IMAGE_EXTS", "FrameReader", "VideoWriter", "resize_frame", "image_to_rgb"]

_MUXERS = {"mkv": "matroska", "m4v": "mp4", "mpg": "mpeg"}  # PyAV muxer names that are not the extension


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
