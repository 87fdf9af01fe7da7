"""``videomac propagate``: track the objects of a first-frame mask through any video."""

from __future__ import annotations

import argparse
import json
from typing import Tuple, Union

from videomac.eval.settings import PropagationConfig, RunSettings
from videomac.eval.track import DEFAULT_MODEL
from videomac.settings import add_options, check_values, from_args


def _size(s: str) -> Union[int, Tuple[int, int]]:
    try:
        if "x" in s.lower():
            h, w = s.lower().split("x")
            return int(h), int(w)
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a short side (480) or HxW (272x640), got {s!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "propagate",
        help="track the objects of a first-frame mask through a video (label propagation)",
        description="Propagate a first-frame mask through a video file or a folder of frames with a frozen "
        "encoder; writes one palette PNG per frame and an overlay MP4.",
    )
    p.add_argument("video", help="video file (mp4, webm, mkv, ... anything PyAV decodes) or a folder of frames")
    p.add_argument(
        "--mask",
        required=True,
        help="first-frame mask PNG whose pixel values are the object ids (1..N, 0 = background): indexed "
        "(palette, as DAVIS), 8-bit grayscale or 1-bit; colour and 16-bit PNGs are refused",
    )
    p.add_argument("--out", required=True, help="output folder (masks/, overlay.mp4, summary.json)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"encoder name (default {DEFAULT_MODEL}) or any timm model")
    p.add_argument(
        "--weights", default=None, help="encoder state dict (.safetensors/.pt/.pth), e.g. a run's encoder.safetensors"
    )
    p.add_argument("--pretrained", action="store_true", help="use the model's published weights (timm pretrained=True)")
    p.add_argument(
        "--size",
        type=_size,
        default=480,
        help="frames are downscaled to this short side for the encoder (default 480; 0 = native) or "
        "resized to HxW; outputs keep the video's size",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--half", action="store_true", help="bf16 features on CUDA")
    p.add_argument(
        "--stage", default=None, help="feature module (default: the last stage, layer4 / stages.3, at stride 8)"
    )
    add_options(p, RunSettings, ["stride"])
    add_options(p, PropagationConfig)
    add_options(p, RunSettings, ["batch_size", "alpha"], defaults=dict(batch_size=4, alpha=0.5))
    p.add_argument("--no-overlay", action="store_true", help="write the PNGs only")
    add_options(p, RunSettings, ["max_frames"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = PropagationConfig.from_args(args)  # settings first: a bad value answers before torch loads
    check_values(RunSettings, **{k: v for k, v in from_args(RunSettings, args).items() if k != "size"})  # HxW
    from videomac.outputs import check_outputs

    check_outputs([args.video, args.mask, args.weights], folders={"--out": args.out})
    from videomac.eval.track import track_video

    s = track_video(
        args.video,
        args.mask,
        args.out,
        model=args.model,
        weights=args.weights,
        pretrained=args.pretrained,
        device=args.device,
        half=args.half,
        stage=args.stage,
        stride=args.stride,
        config=config,
        size=args.size,
        batch_size=args.batch_size,
        overlay=not args.no_overlay,
        alpha=args.alpha,
        max_frames=args.max_frames,
        progress=not args.no_progress,
    )
    print(json.dumps({k: s[k] for k in ("frames", "objects", "frames_per_second", "masks", "overlay")}))
    return 0
