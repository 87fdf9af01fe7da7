"""``videomac convert-official``: the authors' checkpoints as videomac (timm) weights."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    c = sub.add_parser(
        "convert-official",
        help="convert a checkpoint of the authors' MinkowskiEngine code to timm weights (.safetensors)",
    )
    c.add_argument("checkpoint", help="their checkpoint-*.pth (online_without_ddp is used) or a bare state_dict")
    c.add_argument("--model", required=True, help="videomac model name the checkpoint holds")
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load with torch.load(weights_only=False) a file holding Python objects other than tensors and "
        "argparse.Namespace. Unpickling can run arbitrary code: only for files you trust",
    )
    c.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.outputs import check_outputs

    check_outputs([args.checkpoint], files={"--out": args.out})
    from videomac.convert import convert_official_file

    out = convert_official_file(args.checkpoint, args.model, args.out, trust_pickle=args.trust_pickle)
    print(f"wrote {out}")
    return 0
