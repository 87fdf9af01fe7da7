"""``videomac pretrain``: VideoMAC pretraining on frame pairs."""

from __future__ import annotations

import argparse
import json
import os
import signal

from videomac.presets import PRESETS
from videomac.pretrain.config import PretrainConfig
from videomac.settings import add_options, from_args

_DEFAULT = PretrainConfig()

EXIT_CODES = """exit codes:
  0        the run finished, or stopped with a checkpoint by --stop-after, or had already finished (a
           resume of a finished run changes nothing)
  1        training failed: a non-finite loss, a DataLoader worker that died, inputs that vanished, a full
           disk; the last good checkpoint is intact (resume with --resume)
  2        bad input or usage: a setting out of its range, a missing or unusable checkpoint or data, a
           resume whose settings differ from its checkpoint's, a folder that holds another run or is locked
  130/143  stopped by SIGINT / SIGTERM (128 + the signal) with a checkpoint at the current step"""


def _preset_note(name: str) -> str:
    """What the paper presets set ``name`` to, where that differs from the default (the help shows what a
    run really uses; options default to None so that a value given can be told apart from a preset's)."""
    default, by_value = getattr(_DEFAULT, name), {}
    for preset, recipe in PRESETS.items():
        if name in recipe and recipe[name] != default and name != "model":
            by_value.setdefault("none" if recipe[name] is None else str(recipe[name]), []).append(preset)
    if not by_value:
        return ""
    common = max(by_value, key=lambda v: len(by_value[v]))
    others = "; ".join(f"{', '.join(n)}: {v}" for v, n in by_value.items() if v != common)
    every = len(by_value[common]) == len(PRESETS)
    return f"{'the paper presets' if every else ', '.join(by_value[common])}: {common}" + (
        f" ({others})" if others else ""
    )


_FIRST = ("data", "model", "preset", "output_dir")  # shown first, with --resume; then the groups


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="VideoMAC pretraining on frame pairs (built-in procedural videos when --data is not given)",
        description="VideoMAC pretraining. Defaults are the paper recipe; launch with torchrun for multi-GPU "
        "or multi-node (DDP). Writes checkpoint.pt (atomically, with a checksum; the one before it is kept), "
        "metrics.jsonl, reconstruction PNGs and, at the end, encoder.safetensors. SIGINT / SIGTERM stop at the "
        "end of the current step with a checkpoint.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, PretrainConfig, _FIRST, unset=True, note=_preset_note)
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        dest="resume_from",
        help="continue the run in OUTPUT_DIR, or in the given run folder (or its checkpoint); the run "
        "writes in that folder, from its newest intact checkpoint",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="resume from a checkpoint that a weights-only load refuses (written by an earlier videomac); "
        "unpickling can run arbitrary code: only for files you wrote",
    )
    add_options(p, PretrainConfig, skip=_FIRST, unset=True, note=_preset_note)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.pretrain.config import check_config, resolve_config

    values = from_args(PretrainConfig, args)
    if args.resume_from:
        from videomac.pretrain.checkpoint import resume_config  # torch: only to resume

        cfg = resume_config(values, preset=args.preset, resume=args.resume_from, trust_pickle=args.trust_pickle)
    else:
        cfg = resolve_config(values, preset=args.preset)
    check_config(cfg)  # before any model or data is built (torch only if resuming)
    from videomac.outputs import check_outputs

    check_outputs([cfg.data], runs={"--output-dir": cfg.output_dir})  # the run owns its folder

    from videomac.pretrain.train import pretrain

    summary = pretrain(cfg, args.trust_pickle)
    if summary.get("nothing_to_do"):  # a finished run resumed: its one line is said, nothing changed
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        shown = dict(summary)
        skipped = shown.pop("skipped", {})
        if skipped:
            shown["skipped_first"] = dict(list(skipped.items())[:5])
        print(json.dumps(shown, indent=2))
    if summary.get("signal"):  # stopped by a signal, with a checkpoint: the shell convention 128 + signal
        return 128 + int(getattr(signal, summary["signal"]))
    return 0
