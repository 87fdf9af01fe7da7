"""``videomac eval {davis,vip,jhmdb}``: label propagation with a frozen encoder."""

from __future__ import annotations

import argparse
import json

from videomac.eval.settings import PropagationConfig, RunSettings
from videomac.settings import add_options, check_values, from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="label-propagation evaluation (DAVIS-2017/2016, VIP, JHMDB)",
        description="Propagate first-frame labels with frozen features (CRW protocol) and score them.",
    )
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench.required = True
    for name, help_ in (
        ("davis", "DAVIS video object segmentation, 2016 or 2017 layout (J&F)"),
        ("vip", "VIP human part propagation (mIoU)"),
        ("jhmdb", "JHMDB pose keypoint propagation (PCK)"),
    ):
        b = bench.add_parser(name, help=help_)
        b.add_argument("--model", required=True, help="registered encoder (videomac_rn50, ...) or timm model")
        b.add_argument("--weights", default=None, help="state dict (.safetensors / .pt / .pth)")
        b.add_argument("--root", required=True, help="dataset root (see docs/evaluation.md)")
        b.add_argument("--out", required=True, help="output folder")
        b.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        b.add_argument(
            "--stage",
            default=None,
            help="feature module, e.g. layer3 or stages.2 (default: the last stage, layer4 / stages.3, at stride 8)",
        )
        add_options(b, RunSettings, ["stride"])
        b.add_argument("--half", action="store_true", help="bf16 features on CUDA")
        add_options(b, PropagationConfig)
        add_options(b, RunSettings, ["batch_size", "overlay_frames"], defaults=dict(batch_size=8, overlay_frames=6))
        b.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "davis":
            b.add_argument("--sequences", nargs="+", default=None, help="subset of the split's sequences")
            b.add_argument("--split", default="val", help="ImageSets split to evaluate (default: val)")
            b.add_argument(
                "--layout", default="auto", choices=["auto", "2016", "2017"], help="DAVIS layout (default: detect)"
            )
        else:
            b.add_argument("--videos", nargs="+", default=None, help="subset of the list's videos")
            b.add_argument("--list", dest="list_file", default=None, help="video list file")
            add_options(b, RunSettings, ["size"], defaults=dict(size=560 if name == "vip" else 320))
        b.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = PropagationConfig.from_args(args)  # settings first: a bad value answers before torch loads
    check_values(RunSettings, **from_args(RunSettings, args))
    from videomac.outputs import check_outputs

    check_outputs([args.root, args.weights, getattr(args, "list_file", None)], folders={"--out": args.out})
    from videomac.eval.benchmark import run_benchmark

    extra = (
        dict(sequences=args.sequences, split=args.split, layout=args.layout)
        if args.benchmark == "davis"
        else dict(list_file=args.list_file, videos=args.videos, size=args.size)
    )
    stage = None if args.stage in (None, "", "auto") else args.stage
    metrics, keys = run_benchmark(
        args.benchmark,
        args.model,
        args.root,
        args.out,
        weights=args.weights,
        device=args.device,
        stage=stage,
        stride=args.stride,
        half=args.half,
        config=config,
        batch_size=args.batch_size,
        overlay_frames=args.overlay_frames,
        progress=not args.no_progress,
        **extra,
    )
    print(json.dumps({k: round(float(metrics[k]), 6) for k in keys}))
    return 0
