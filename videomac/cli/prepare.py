"""``videomac prepare``: a pre-resized copy of a dataset (frame folders; videos to frame folders or
short-GOP MP4s), resumable, never touching SRC."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="write a pre-resized copy of a dataset (frame folders, videos) for faster loading",
        description="Copy SRC (frame folders and/or video files, as videomac pretrain --data reads them) into "
        "DST with every frame resized to --short-side. Videos become frame folders (default) or short-GOP "
        "MP4s (--videos mp4). Resumable: finished items are skipped; SRC is only read.",
    )
    p.add_argument("src", help="dataset to copy: a folder of frame folders or videos, or one video")
    p.add_argument("dst", help="where to write the copy (outside SRC)")
    p.add_argument("--short-side", type=int, default=360, help="short side of the written frames (default 360)")
    p.add_argument(
        "--videos",
        choices=["frames", "mp4"],
        default="frames",
        help="write videos as frame folders (default) or re-encoded short-GOP MP4s",
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of written frames (default 90)")
    p.add_argument("--gop", type=int, default=8, help="--videos mp4: a keyframe every N frames (default 8)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.outputs import check_outputs

    check_outputs([args.src], folders={"DST": args.dst})
    from videomac.pretrain.prepare import prepare_dataset

    result = prepare_dataset(
        args.src,
        args.dst,
        short_side=args.short_side,
        videos=args.videos,
        quality=args.quality,
        gop=args.gop,
        workers=args.workers,
        progress=not args.no_progress,
    )
    for name, reason in result["failed"].items():
        print(f"  {name}: {reason}")
    print(json.dumps(result))
    return 1 if result["failed"] else 0
