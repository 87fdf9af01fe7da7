"""Track objects through your own video from a first-frame mask, with the Python API.

    python examples/propagate_video.py clip.mp4 --mask first_frame.png --out runs/tracks \
        --model videomac_rn50 --weights runs/rn50/encoder.safetensors

The building blocks of ``videomac propagate`` (which also writes an overlay video): a frozen encoder
as a :class:`FeatureExtractor`, and :func:`propagate_frames`, which matches each new frame against
the first frame and the last 20 (memory stays bounded however long the video). Frames are streamed
from the file, a few at a time.
"""

import argparse
import os

import numpy as np
import torch

from videomac.eval.annotations import read_mask
from videomac.eval.datasets import write_label_png
from videomac.eval.features import FeatureExtractor
from videomac.eval.propagation import PropagationConfig, labels_to_onehot, propagate_frames, resize_labels
from videomac.eval.video import FrameReader


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("video", help="video file or folder of frames")
    p.add_argument("--mask", required=True, help="first-frame mask PNG (palette ids, or binary)")
    p.add_argument("--out", default="runs/tracks")
    p.add_argument("--model", default="videomac_rn18")
    p.add_argument("--weights", default=None, help="encoder.safetensors from `videomac pretrain`")
    p.add_argument("--n-context", type=int, default=20, help="recent frames to match against")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()

    frames = FrameReader(args.video)  # validates the file; decodes lazily
    first = read_mask(args.mask)  # (H, W) uint8 object ids, 0 = background
    if first.shape != frames.size:
        raise SystemExit(f"the mask is {first.shape}, the video {frames.size} (H, W): they must match")
    ids = np.union1d([0], np.unique(first))
    # the last stage at stride 8 (layer4 for ResNets / stages.3 for ConvNeXt): the paper's evaluation features.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = FeatureExtractor(args.model, weights=args.weights, device=device)
    config = PropagationConfig(n_context=args.n_context)
    onehot = labels_to_onehot(torch.from_numpy(first), ids.tolist())  # (K, H, W), one map per id

    feats = (feat for batch in batches(frames, args.batch_size) for feat in extractor(batch))  # (C, h, w) each
    areas = []
    # (K, h, w) soft label maps per frame: frame 0's given labels at feature resolution, then predictions
    for t, soft in enumerate(propagate_frames(feats, onehot, config)):
        labels = first if t == 0 else ids[resize_labels(soft, frames.size).argmax(0).cpu().numpy()].astype(np.uint8)
        write_label_png(labels, os.path.join(args.out, f"{t:05d}.png"))
        areas.append([(labels == i).mean() for i in ids[1:]])
    n = len(areas)  # frames tracked

    print(f"tracked objects {ids[1:].tolist()} through {n} frames -> {args.out}/*.png")
    for i, obj in enumerate(ids[1:]):
        print(f"object {obj}: area {areas[0][i]:.3%} of frame 0, {areas[-1][i]:.3%} of frame {n - 1}")


def batches(frames, n):
    """Stacks of ``n`` frames ``(n, H, W, 3)`` from a frame iterator (the last may be shorter)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == n:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


if __name__ == "__main__":
    main()
