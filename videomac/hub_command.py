"""``videomac export``, ``videomac push`` and ``videomac convert-official``."""

from __future__ import annotations

import json


def register(sub) -> None:
    e = sub.add_parser("export", help="write the dense encoder of a pretraining run as a Hub-ready folder")
    e.add_argument("checkpoint", help="checkpoint.pt of a pretraining run, or the run folder")
    e.add_argument("--out", required=True, help="folder for model.safetensors, config.json and README.md")
    e.add_argument("--tag", default=None, help="registry tag the weights belong to (for the model card)")
    e.add_argument("--include-checkpoint", action="store_true", help="also copy the full pretraining checkpoint")
    e.set_defaults(func=_export)

    p = sub.add_parser("push", help="export a run and upload it to the Hugging Face Hub")
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--dry-run", action="store_true", help="write the repo folder, upload nothing")
    p.add_argument("--folder", default=None, help="where to build the repo folder (default RUN/hub/ORG--NAME)")
    p.add_argument("--include-checkpoint", action="store_true")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--tag", default=None)
    p.set_defaults(func=_push)

    c = sub.add_parser(
        "convert-official",
        help="convert a checkpoint of the authors' MinkowskiEngine code (or a ConvNeXt-V2 FCMAE one) to timm keys",
    )
    c.add_argument("checkpoint")
    c.add_argument("--model", required=True, help="videomac model name the checkpoint holds")
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.set_defaults(func=_convert)


def _export(args) -> int:
    from videomac.hub import export_folder

    print(json.dumps(export_folder(args.checkpoint, args.out, None, args.include_checkpoint, args.tag)["files"]))
    return 0


def _push(args) -> int:
    from videomac.hub import push

    s = push(args.run, args.repo_id, args.dry_run, args.include_checkpoint, args.folder, args.private,
             args.revision, tag=args.tag)  # fmt: skip
    s.pop("config", None)
    print(json.dumps(s, indent=2))
    return 0


def _convert(args) -> int:
    from videomac.convert import convert_official_file

    out = convert_official_file(args.checkpoint, args.model, args.out)
    print(f"wrote {out}")
    return 0
