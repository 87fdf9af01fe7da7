"""``videomac pretrain``: VideoMAC pretraining on frame pairs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal

from videomac.presets import PRESETS
from videomac.pretrain.config import PretrainConfig

_DEFAULT = PretrainConfig()

EXIT_CODES = """exit codes:
  0        the run finished, or stopped with a checkpoint by --stop-after, or had already finished (a
           resume of a finished run changes nothing)
  1        training failed: a non-finite loss, a DataLoader worker that died, inputs that vanished, a full
           disk; the last good checkpoint is intact (resume with --resume)
  2        bad input or usage: a setting out of its range, a missing or unusable checkpoint or data, a
           resume whose settings differ from its checkpoint's, a folder that holds another run or is locked
  130/143  stopped by SIGINT / SIGTERM (128 + the signal) with a checkpoint at the current step"""


def _shown(v) -> str:
    return "none" if v is None else str(v)


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each setting's effective default, and what the paper presets set it to, to its help.

    Options default to None on the command line so that an explicit value can be told apart from a
    preset's; the help shows what a run really uses.
    """
    for action in parser._actions:
        if not any(action.dest == f.name for f in dataclasses.fields(PretrainConfig)):
            continue
        default = getattr(_DEFAULT, action.dest)
        by_value = {}
        for name, preset in PRESETS.items():
            if action.dest in preset and preset[action.dest] != default and action.dest != "model":
                by_value.setdefault(_shown(preset[action.dest]), []).append(name)
        note = f"default: {_shown(default)}"
        if by_value:
            common = max(by_value, key=lambda v: len(by_value[v]))
            others = "; ".join(f"{', '.join(n)}: {v}" for v, n in by_value.items() if v != common)
            every = len(by_value[common]) == len(PRESETS)
            note += f"; {'the paper presets' if every else ', '.join(by_value[common])}: {common}"
            note += f" ({others})" if others else ""
        action.help = f"{action.help} ({note})" if action.help else note


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
    p.add_argument("--data", default=None, help="frame folders root, video folder, list file, or one video")
    p.add_argument("--model", default=None, help="encoder name (any videomac_* or timm ConvNet)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="set the whole paper recipe for a backbone")
    p.add_argument("--output-dir", default=None, help="run folder")
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
    g = p.add_argument_group("method")
    g.add_argument("--input-size", type=int)
    g.add_argument("--gap", type=int, help="frame distance within a pair")
    g.add_argument("--mask-ratio", type=float)
    g.add_argument("--decoder-dim", type=int)
    g.add_argument("--decoder-depth", type=int)
    g.add_argument("--gamma", type=float, help="weight of the reconstruction-consistency loss")
    g.add_argument(
        "--norm-pix-loss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="targets normalised per patch (mean/variance, as MAE and the paper)",
    )
    g.add_argument("--motion-weight", type=float, help="MAM2 motion (RGB difference) target weight; 0 = off")
    g.add_argument("--drop-path", type=float)
    g.add_argument(
        "--backend",
        choices=["auto", "visible", "masked"],
        help="encoder execution: every layer on visible positions only, masked-dense (the "
        "reference), or auto: the one measured fastest on the device",
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--accum-iter", type=int, help="gradient accumulation steps")
    g.add_argument("--total-batch", type=int, help="effective batch; sets --accum-iter from batch and world size")
    g.add_argument("--epochs", type=int)
    g.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--stop-after", type=int, help="stop after N steps of this invocation (resume later)")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--blr", type=float, help="base lr: lr = blr * effective batch / 256")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--ema-base", type=float, help="EMA momentum at step 0 (rises to 1 on a cosine)")
    g.add_argument(
        "--ema-schedule",
        choices=["cosine", "authors"],
        help="cosine over the whole run, or as the authors' code indexes it (the step within the epoch, so the "
        "momentum stays ~ema-base)",
    )
    g.add_argument(
        "--init",
        choices=["authors", "timm"],
        help="online model init: timm's encoder init + 0.02 decoder, or the authors' rules",
    )
    g.add_argument("--clip-grad", type=float)
    g = p.add_argument_group("system")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"])
    g.add_argument("--device", choices=["auto", "cuda", "cpu"])
    g.add_argument("--num-workers", type=int, help="DataLoader workers (none: the CPU cores of this process less one)")
    g.add_argument(
        "--gpu-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEG frames on the CUDA device (torchvision nvJPEG) instead of in the CPU workers",
    )
    g.add_argument(
        "--frame-units",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="frame folders served like videos: runs of consecutive pairs per worker, each JPEG decoded "
        "about once instead of twice (faster; batches mix ~8 videos per worker instead of independent "
        "pairs)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (first steps slower while it compiles)",
    )
    g.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode with --compile; reduce-overhead captures CUDA graphs",
    )
    g.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic kernels: a rerun or a resume on the same GPU gives the same weights, bit for bit (slower)",
    )
    g.add_argument("--seed", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--save-every", type=int, help="steps between checkpoints")
    g.add_argument("--keep-checkpoints", type=int, help="checkpoints kept: checkpoint.pt and the K-1 before it")
    g.add_argument("--vis-every", type=int, help="epochs between reconstruction figures")
    g.add_argument(
        "--pairs-per-video",
        type=int,
        help="random pairs drawn from each video per epoch (none: every (t, t+gap) pair, the authors')",
    )
    g.add_argument("--synthetic-videos", type=int, help="number of built-in videos (no --data)")
    g.add_argument("--synthetic-frames", type=int, help="frames per built-in video")
    g.add_argument("--video-short-side", type=int, help="downscale decoded videos to this short side")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on a terminal, one log line per --log-every steps otherwise",
    )
    g.add_argument(
        "--export", action=argparse.BooleanOptionalAction, default=None, help="write encoder.safetensors at the end"
    )
    _with_defaults(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videomac.pretrain.config import check_config, resolve_config

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
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
