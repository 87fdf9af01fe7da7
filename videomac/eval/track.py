"""Track the objects of a first-frame mask through any video (``videomac propagate``).

Frames are streamed (decoded, encoded and propagated a few at a time), so memory stays bounded for
long videos: the propagator keeps only frame 0 and the last ``n_context`` frames' features. The
pieces are those of ``videomac eval`` (:class:`~videomac.eval.features.FeatureExtractor`,
:func:`~videomac.eval.propagation.propagate_frames`, the runner's label resizing and overlays).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from typing import Deque, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from videomac.files import atomic_file

__all__ = ["propagate_video", "track_video", "processing_size", "MIN_SIDE"]

DEFAULT_MODEL = "videomac_rn18"
MIN_SIDE = 32  # the smallest frame side the encoder is given (4 feature cells at the default stride 8)


def processing_size(video_hw: Sequence[int], size: Union[None, int, Sequence[int]]) -> Tuple[int, int]:
    """The ``(H, W)`` frames are resized to before feature extraction.

    ``size`` None or 0: the video's own size; an int: the short side is scaled down to it (never up),
    keeping the aspect ratio; ``(H, W)``: exactly that. Both sides must come out at least
    :data:`MIN_SIDE` pixels (smaller inputs leave the encoder no feature map to propagate on).
    """
    H, W = int(video_hw[0]), int(video_hw[1])
    if not size:
        out = H, W
    elif isinstance(size, int):
        if size < 0:
            raise ValueError(f"size must be a short side >= 0 or (H, W), got {size}")
        s = min(1.0, size / min(H, W))
        out = max(1, round(H * s)), max(1, round(W * s))
    elif len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a short side or (H, W), got {size}")
    else:
        out = int(size[0]), int(size[1])
    if min(out) < MIN_SIDE:
        what = "the video's own size" if not size else f"size {size} on a {W}x{H} (WxH) video"
        raise ValueError(
            f"{what} gives {out[1]}x{out[0]} (WxH) frames to the encoder; each side must be at least "
            f"{MIN_SIDE} pixels (e.g. --size 480, the default, or --size 0 for the video's own size)"
        )
    return out


def propagate_video(
    video: str,
    mask: Union[str, np.ndarray],
    out_dir: str,
    model: str = DEFAULT_MODEL,
    weights: Optional[str] = None,
    extractor=None,
    size: Union[None, int, Sequence[int]] = 480,
    device: str = "cpu",
    config=None,
    batch_size: int = 4,
    overlay: bool = True,
    alpha: float = 0.5,
    max_frames: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, object]:
    """Propagate ``mask`` (a PNG path or an ``(H, W)`` id map of the first frame) through ``video``.

    Writes ``out_dir/masks/<frame>.png`` (DAVIS-palette PNGs at the video's size, frame 0 = the given
    mask), ``out_dir/overlay.mp4`` (frames with the masks blended, unless ``overlay=False``) and
    ``out_dir/summary.json``; returns the summary. ``extractor`` (a FeatureExtractor) overrides
    ``model``/``weights``/``device``. Raises ``FileNotFoundError`` for a missing video or mask and
    ``ValueError`` for an unreadable video, a mask of another size or a mask without objects.
    """
    from videomac.eval.datasets import default_palette, write_label_png
    from videomac.eval.features import FeatureExtractor
    from videomac.eval.outputs import check_output_folder
    from videomac.eval.runner import argmax_labels, blend_labels
    from videomac.eval.video import FrameReader, VideoWriter

    reader = FrameReader(video)
    check_output_folder(out_dir, [video, mask if isinstance(mask, str) else None])
    H, W = reader.size
    lab0, ids = _first_mask(mask, (H, W))
    proc = processing_size((H, W), size)
    if extractor is None:
        extractor = FeatureExtractor(model, weights=weights, device=device)
    palette = default_palette()
    names = [os.path.splitext(os.path.basename(p))[0] for p in reader.paths] if reader.paths else None
    frames = reader.indexed()
    total = reader.num_frames if max_frames is None else min(max_frames, reader.num_frames or max_frames)
    frames = frames if max_frames is None else (f for _, f in zip(range(max_frames), frames))
    mask_dir = os.path.join(out_dir, "masks")
    os.makedirs(mask_dir, exist_ok=True)
    writer = VideoWriter(os.path.join(out_dir, "overlay.mp4"), fps=reader.fps) if overlay else None
    t, areas = 0, {}
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="propagate", unit="frame", dynamic_ncols=True)
    try:
        for k, frame, soft in _propagated(frames, lab0, ids, extractor, proc, batch_size, config):
            lab = lab0 if t == 0 else argmax_labels(soft, (H, W), ids)
            name = names[k] if names else f"{k:05d}"
            write_label_png(lab, os.path.join(mask_dir, f"{name}.png"), palette)
            if writer is not None:
                writer.write(blend_labels(frame, lab, palette, alpha))
            areas = {int(i): float((lab == i).mean()) for i in ids[1:]}
            t += 1
            if bar is not None:
                bar.update(1)
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "video": video,
        "frames": t,
        "size": [H, W],
        "processing_size": list(proc),
        "objects": ids[1:].tolist(),
        "last_frame_area": areas,
        "seconds": round(seconds, 3),
        "frames_per_second": round(t / max(seconds, 1e-9), 3),
        "encoder": extractor.describe(),
        "masks": mask_dir,
        "overlay": writer.path if writer else None,
        "skipped": [{"path": p, "reason": r} for p, r in reader.skipped],
    }
    _write_summary(summary, out_dir, reader.skipped)
    return summary


def _first_mask(mask: Union[str, np.ndarray], video_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The first frame's ``(H, W)`` id map and its ids (background 0 first), checked against the video."""
    from videomac.eval.annotations import check_annotation_size, read_mask

    lab0 = read_mask(mask) if isinstance(mask, str) else np.asarray(mask, dtype=np.uint8)
    what = f"mask {mask}" if isinstance(mask, str) else "the mask"
    if lab0.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D label map, got shape {lab0.shape}")
    check_annotation_size(what, lab0.shape, video_hw, "the video's first frame")
    ids = np.union1d([0], np.unique(lab0)).astype(np.uint8)
    if len(ids) == 1:
        raise ValueError(
            f"{what} has no objects (every pixel is background 0); expected object ids 1..N "
            "(an indexed PNG) or a binary mask with the object non-zero"
        )
    return lab0, ids


def _propagated(frames, lab0, ids, extractor, proc, batch_size, config):
    """``(frame index, frame, soft maps at feature resolution)`` for each ``(index, frame)`` of ``frames``."""
    import torch

    from videomac.eval.propagation import labels_to_onehot, propagate_frames
    from videomac.eval.runner import encode_frames
    from videomac.eval.video import resize_frame

    pending: Deque[Tuple[int, np.ndarray]] = deque()  # frames read and encoded whose maps are not out yet

    def images() -> Iterator[np.ndarray]:
        for k, frame in frames:
            pending.append((k, frame))
            yield resize_frame(frame, proc)

    onehot = labels_to_onehot(torch.from_numpy(lab0), ids.tolist())
    for soft in propagate_frames(encode_frames(extractor, images(), batch_size), onehot, config):
        yield (*pending.popleft(), soft)


def _write_summary(summary: Dict[str, object], out_dir: str, skipped) -> None:
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable frame(s) (listed in summary.json): "
            + "; ".join(p for p, _ in skipped[:5]),
            file=sys.stderr,
        )
    with atomic_file(os.path.join(out_dir, "summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)


def track_video(
    video: str,
    mask: str,
    out_dir: str,
    model: str = DEFAULT_MODEL,
    weights: Optional[str] = None,
    pretrained: bool = False,
    device: Optional[str] = None,
    half: bool = False,
    stage: Optional[str] = None,
    stride: Optional[int] = None,
    config=None,
    **kwargs,
) -> Dict[str, object]:
    """:func:`propagate_video` with the encoder built from a name: checks the video and mask first (so
    mistakes fail in a second, not after model setup), then builds the feature extractor
    (``device`` None: CUDA when available; ``half``: bf16 features on CUDA). ``config``: a
    :class:`~videomac.eval.propagation.PropagationConfig` (default: CRW's protocol). ``kwargs`` go to
    :func:`propagate_video`; numeric ones are range-checked first (:class:`videomac.eval.settings.RunSettings`)."""
    import torch

    from videomac.eval.annotations import read_mask
    from videomac.eval.features import FeatureExtractor, create_encoder
    from videomac.eval.outputs import check_output_folder
    from videomac.eval.propagation import PropagationConfig
    from videomac.eval.settings import check_settings, resolve_device
    from videomac.eval.video import FrameReader
    from videomac.pretrained import WeightsNotPublishedError

    check_settings(stride=stride, **{k: v for k, v in kwargs.items() if k != "size"})  # size: processing_size
    config = config or PropagationConfig()
    device = resolve_device(device)
    reader = FrameReader(video)
    check_output_folder(out_dir, [video, mask])
    read_mask(mask)
    processing_size(reader.size, kwargs.get("size", 480))  # a size the encoder cannot take fails here
    try:
        encoder = create_encoder(model, weights, pretrained=pretrained)
    except WeightsNotPublishedError as e:
        raise ValueError(str(e)) from None
    if not (weights or pretrained):
        print(
            f"note: no --weights: {model} is randomly initialised; pass --weights encoder.safetensors "
            "(from `videomac pretrain`) for real tracking quality",
            file=sys.stderr,
        )
    dtype = torch.bfloat16 if half and device.startswith("cuda") else torch.float32
    extractor = FeatureExtractor(encoder, stage=stage, stride=stride, device=device, dtype=dtype)
    extractor.model_name = model
    return propagate_video(video, mask, out_dir, extractor=extractor, config=config, **kwargs)
