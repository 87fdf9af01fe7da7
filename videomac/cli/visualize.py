"""``videomac visualize``: reconstruction figure of a pretraining checkpoint on any video."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    v = sub.add_parser(
        "visualize",
        help="reconstruction figure (frame pair, mask, online and target reconstructions) from a checkpoint",
    )
    v.add_argument("checkpoint", help="checkpoint.pt of a pretraining run (or its folder)")
    v.add_argument("video", help="a video file or a folder of frames")
    v.add_argument("--out", default="reconstruction.png", help="the figure's PNG path (default: %(default)s)")
    v.add_argument("--rows", type=int, default=4, help="frame pairs to show (default: %(default)s)")
    v.add_argument("--input-size", type=int, default=None, help="crop size in pixels (default: the run's)")
    v.add_argument("--seed", type=int, default=0, help="seed of the pairs and masks (default: %(default)s)")
    v.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a checkpoint that a weights-only load refuses (an earlier videomac's); unpickling "
        "can run arbitrary code: only for files you wrote",
    )
    v.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.outputs import check_outputs

    check_outputs([args.checkpoint, args.video], files={"--out": args.out})
    from videomac.pretrain.visualize import visualize_checkpoint

    path = visualize_checkpoint(
        args.checkpoint, args.video, args.out, args.rows, args.input_size, args.seed, trust_pickle=args.trust_pickle
    )
    print(f"wrote {path}")
    return 0
