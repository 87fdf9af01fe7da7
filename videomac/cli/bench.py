"""``videomac bench pretrain|data|propagate``: benchmarks, measured side by side in one run."""

from __future__ import annotations

import argparse
import json
import os

from videomac import bench
from videomac.files import atomic_file
from videomac.outputs import check_outputs
from videomac.pretrain.config import PretrainConfig
from videomac.settings import choices


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: sparse pretraining step, data loading, label propagation")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    pp = sub.add_parser(
        "pretrain",
        help="train-step pairs/s and peak memory: visible vs masked vs dense vs ViT-S/16 SiamMAE",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument("--models", nargs="+", help=f"encoders (default {' '.join(bench.DEFAULT_MODELS)})")
    pp.add_argument("--configs", help=f"comma-separated subset of {','.join(bench.CONFIGS)} (default all)")
    pp.add_argument("--batch-size", type=int, help="frame pairs per step (default 8; quick 2)")
    pp.add_argument("--input-size", type=int, help="square input size in px (default 224; quick 64)")
    pp.add_argument("--steps", type=int, help="timed steps per row (default 5; quick 2)")
    pp.add_argument("--warmup", type=int, help="untimed steps first (default 2; quick 1)")
    pp.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of patches masked (default 0.75)")
    pp.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    pp.add_argument(
        "--amp", choices=choices(PretrainConfig, "amp"), default="none", help="autocast dtype (default none)"
    )
    pp.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model of every row (its compile time is reported beside pairs/s)",
    )
    pp.add_argument(
        "--compile-mode",
        choices=choices(PretrainConfig, "compile_mode"),
        default="default",
        help="torch.compile mode; reduce-overhead captures CUDA graphs (default: default)",
    )
    pp.add_argument("--no-vit", action="store_true", help="skip the ViT-S/16 SiamMAE row")
    pp.add_argument("--no-isolate", action="store_true", help="run rows in this process (no CPU memory numbers)")
    pp.add_argument("--quick", action="store_true", help="smoke test: cnxv2_atto + rn18, 64 px, batch 2, 2 steps")
    pp.add_argument(
        "--profile",
        metavar="DIR",
        help="also profile 2 steps per row (torch.profiler): tables to DIR, kernel launches and device "
        "busy time per step (CUDA) in the rows",
    )
    pp.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved rounds of all rows; report medians (on a loaded machine; default 1)",
    )
    pp.add_argument("--out", help="write the results as JSON")
    pp.set_defaults(func=pretrain)

    pd = sub.add_parser(
        "data",
        help="frame-pair loader pairs/s and peak RSS on your data, beside the authors' PIL pipeline",
        description="Loader throughput (pairs/s) and peak RSS on your own data; see videomac.bench.data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pd.add_argument(
        "--data",
        action="append",
        required=True,
        help="frame folders or video files (as videomac pretrain --data); repeat for several",
    )
    pd.add_argument("--workers", type=int, help="DataLoader workers (default: from the CPU count)")
    pd.add_argument("--pairs", type=int, default=512, help="timed pairs per row (default 512)")
    pd.add_argument("--input-size", type=int, default=224, help="square crop size in px (default 224)")
    pd.add_argument("--batch-size", type=int, default=32, help="frame pairs per batch (default 32)")
    pd.add_argument("--warmup", type=int, help="untimed batches first (default: one per worker)")
    pd.add_argument("--no-reference", action="store_true", help="skip the authors' pipeline rows")
    pd.add_argument(
        "--no-units",
        action="store_true",
        help="skip the rows with frame folders served by unit (pretrain --frame-units)",
    )
    pd.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on --device (CUDA)")
    pd.add_argument("--device", default="cpu", help="where batches go and are normalised (default cpu)")
    pd.add_argument("--seed", type=int, default=0, help="seed of the pair sampling and crops (default 0)")
    pd.add_argument("--out", help="write the results as JSON")
    pd.set_defaults(func=data)

    pr = sub.add_parser("propagate", help="label-propagation frames/s: local window vs naive dense affinity")
    pr.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    pr.add_argument("--quick", action="store_true", help="small sizes")
    pr.add_argument("--out", help="write the results as JSON")
    pr.set_defaults(func=propagate)


def _write(result, path) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_file(path) as tmp, open(tmp, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        print(f"wrote {path}")


def pretrain(args: argparse.Namespace) -> int:
    check_outputs(files={"--out": args.out}, folders={"--profile": args.profile})
    from videomac.bench.pretrain import bench_pretrain, format_table, resolve_options

    kw = resolve_options(
        args.quick,
        models=args.models,
        configs=args.configs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        compile_mode=args.compile_mode,
        mask_ratio=args.mask_ratio,
        vit=not args.no_vit,
        isolate=not args.no_isolate,
        profile=args.profile,
        repeats=args.repeats,
    )
    print(f"videomac bench pretrain: {json.dumps({k: v for k, v in kw.items() if k != 'models'})}")
    result = bench_pretrain(**kw)
    print()
    print(format_table(result))
    print(f"\nmemory: {result['meta']['memory_method']}")
    for r in result["rows"]:
        if "profile" in r:
            per_step = {
                k: round(r[k], 1) for k in ("launches_per_step", "device_busy_ms_per_step", "ops_per_step") if k in r
            }
            print(f"profile {r['model']} / {r['config']}: {per_step} step {r['step_s'] * 1e3:.1f} ms -> {r['profile']}")
    _write(result, args.out)
    return 1 if any("error" in r for r in result["rows"]) else 0


def data(args: argparse.Namespace) -> int:
    check_outputs(args.data, files={"--out": args.out})
    from videomac.bench.data import bench_data, format_table, to_json

    kw = dict(
        data=args.data,
        workers=args.workers,
        pairs=args.pairs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        warmup=args.warmup,
        reference=not args.no_reference,
        gpu_decode=args.gpu_decode,
        device=args.device,
        seed=args.seed,
        units=not args.no_units,
    )
    print(f"videomac bench data: {json.dumps(kw)}")
    result = bench_data(**kw)
    print()
    print(format_table(result))
    _write(result, args.out)
    print(to_json(result))
    return 1 if any("error" in r for r in result["rows"]) else 0


def propagate(args: argparse.Namespace) -> int:
    check_outputs(files={"--out": args.out})
    from videomac.bench.propagate import bench_propagation

    kw = dict(device=args.device)
    if args.quick:
        kw.update(num_frames=6, height=24, width=40, channels=64)
    result = bench_propagation(**kw)
    print(json.dumps(result, indent=2, default=str))
    _write(result, args.out)
    return 0
