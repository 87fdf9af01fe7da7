"""``videomac push``: export a run and upload it to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("push", help="export a run and upload it to the Hugging Face Hub")
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help='build the repo folder and list the files push would upload ("upload"); upload nothing',
    )
    p.add_argument("--folder", default=None, help="where to build the repo folder (default RUN/hub/ORG--NAME)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private (if it does not exist)")
    p.add_argument("--revision", default=None, help="branch of the Hub repo to commit to (default: main)")
    p.add_argument("--tag", default=None, help="registry tag the weights belong to (for the model card)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a checkpoint that a weights-only load refuses (an earlier videomac's); unpickling "
        "can run arbitrary code: only for files you wrote",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.outputs import check_outputs

    check_outputs([args.run], folders={"--folder": args.folder})  # the default folder is RUN/hub/ORG--NAME
    from videomac.hub import push

    s = push(
        args.run,
        args.repo_id,
        args.dry_run,
        args.folder,
        args.private,
        args.revision,
        tag=args.tag,
        trust_pickle=args.trust_pickle,
    )
    s.pop("config", None)
    print(json.dumps(s, indent=2))
    return 0
