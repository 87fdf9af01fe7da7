"""``videomac convert-official``: the authors' checkpoints as videomac (timm) weights."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    c = sub.add_parser(
        "convert-official",
        help="convert a checkpoint of the authors' MinkowskiEngine code (or a ConvNeXt-V2 FCMAE one) to timm keys",
    )
    c.add_argument("checkpoint")
    c.add_argument("--model", required=True, help="videomac model name the checkpoint holds")
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.convert import convert_official_file

    print(f"wrote {convert_official_file(args.checkpoint, args.model, args.out)}")
    return 0
