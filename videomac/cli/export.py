"""``videomac export``: a run's dense encoder as a Hub-ready folder."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    e = sub.add_parser("export", help="write the dense encoder of a pretraining run as a Hub-ready folder")
    e.add_argument("checkpoint", help="checkpoint.pt of a pretraining run, or the run folder")
    e.add_argument("--out", required=True, help="folder for model.safetensors, config.json and README.md")
    e.add_argument("--tag", default=None, help="registry tag the weights belong to (for the model card)")
    e.add_argument("--include-checkpoint", action="store_true", help="also copy the full pretraining checkpoint")
    e.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a checkpoint that a weights-only load refuses (an earlier videomac's); unpickling "
        "can run arbitrary code: only for files you wrote",
    )
    e.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.outputs import check_outputs

    check_outputs([args.checkpoint], folders={"--out": args.out})
    from videomac.hub import export_folder

    s = export_folder(
        args.checkpoint, args.out, None, args.include_checkpoint, args.tag, trust_pickle=args.trust_pickle
    )
    print(json.dumps(s["files"]))
    return 0
