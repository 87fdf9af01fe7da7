"""Pretrain a VideoMAC encoder on your own videos from Python, then load it with timm.

    python examples/pretrain_own_videos.py --videos /path/to/videos --model videomac_cnxv2_s \
        --input-size 224 --batch-size 64 --epochs 100 --out runs/my-cnxv2s

``--videos`` is anything ``videomac pretrain --data`` takes: a folder of video files (mp4, webm, ...),
a folder of frame folders, a list file, or one video. The same run from the shell is
``videomac pretrain --data VIDEOS --model MODEL --output-dir OUT``.
"""

import argparse
import json
import os

import timm
import torch

from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="videos or frame folders (see videomac pretrain --data)")
    p.add_argument("--model", default="videomac_cnxv2_atto")
    p.add_argument("--input-size", type=int, default=224, help="a multiple of 32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument(
        "--pairs-per-video", type=int, default=None, help="random pairs per video per epoch (default: every pair)"
    )
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default="runs/my-videomac")
    args = p.parse_args()

    # The defaults of PretrainConfig are the paper recipe (mask ratio 0.75, symmetric masks, EMA target,
    # AdamW, blr 1e-3 with warm-up and cosine); only the run's size is set here.
    cfg = PretrainConfig(
        model=args.model,
        data=args.videos,
        output_dir=args.out,
        input_size=args.input_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        warmup_steps=None if args.max_steps is None else max(1, args.max_steps // 10),
        pairs_per_video=args.pairs_per_video,
        decoder_dim=args.decoder_dim,
        num_workers=args.workers,
        log_every=1,
    )
    summary = pretrain(cfg)  # writes checkpoint.pt, metrics.jsonl, reconstruction.png, encoder.safetensors
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    print(f"pretrained {summary['step']} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    # The exported encoder is a plain timm state dict: load it like any pretrained timm model.
    encoder = timm.create_model(
        args.model, pretrained=True, pretrained_cfg_overlay=dict(file=summary["encoder"])
    ).eval()
    with torch.no_grad():
        feats = encoder.forward_features(torch.randn(1, 3, args.input_size, args.input_size))
    print(f"loaded {summary['encoder']} into timm.create_model({args.model!r}): features {tuple(feats.shape)}")
    # ... and as a multi-scale backbone for detection / segmentation heads:
    backbone = timm.create_model(
        args.model, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=summary["encoder"])
    )
    print(f"features_only channels {backbone.feature_info.channels()}, strides {backbone.feature_info.reduction()}")


if __name__ == "__main__":
    main()
