"""``videomac bench``: pretraining step throughput/memory per sparse backend, and propagation speed.

``videomac bench pretrain`` times one full train step (forward + backward + AdamW step + EMA update)
of the same batch under four configurations per encoder, side by side in one run:

- ``visible``: VideoMAC with ``backend='visible'`` (pointwise layers on visible positions only);
- ``masked``: VideoMAC with ``backend='masked'`` (every layer dense, masked positions zeroed);
- ``visible_r0``: the visible path with nothing masked (separates implementation effects from sparsity);
- ``dense``: the plain timm encoder on unmasked frames + the same decoder, EMA target and losses;

plus one ``vit_s16_siammae`` row: a siamese MAE step on timm's ``vit_small_patch16_224`` that
encodes only the visible tokens of both frames (shared encoder, 2-block 256-d decoder, MSE on masked
patches, no EMA). Peak memory: each configuration runs in its own process forked from a fresh
server process (``multiprocessing`` 'forkserver'); on CPU it is the rise of the process's max RSS
(``getrusage``) over its RSS just before the first step, i.e. optimizer state, gradients and
activations; on CUDA it is ``torch.cuda.max_memory_allocated`` over the allocation before the
first step.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn

import videomac.models  # noqa: F401  (registers the videomac encoders with timm)
from videomac.masking import random_mask
from videomac.pretrain.model import Decoder, VideoMAC, masked_mse, patch_targets
from videomac.pretrain.schedule import build_optimizer

__all__ = ["bench_pretrain", "flop_split", "register", "DEFAULT_MODELS", "CONFIGS"]

DEFAULT_MODELS = ["videomac_rn18", "videomac_rn50", "videomac_cnxv2_t", "videomac_cnxv2_s"]
QUICK_MODELS = ["videomac_cnxv2_atto", "videomac_rn18"]
CONFIGS = ["visible", "masked", "visible_r0", "dense"]
VIT = "vit_s16_siammae"


# ----------------------------------------------------------------------------------------------
# FLOP bound


def flop_split(name: str, input_size: int = 224, mask_ratio: float = 0.75) -> Dict[str, float]:
    """Encoder MACs per image in pointwise (Linear, 1x1 conv) vs spatial convs, and the best possible
    visible/masked speed ratio ``(P + S) / ((1 - r) P + S)`` if time were proportional to MACs."""
    model = timm.create_model(name, num_classes=0).eval()
    macs = {"pointwise": 0, "spatial": 0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Linear):
            macs["pointwise"] += out.numel() * m.in_features
        else:
            k = m.kernel_size[0] * m.kernel_size[1]
            macs["pointwise" if k == 1 else "spatial"] += out.numel() * (m.in_channels // m.groups) * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    p, s = float(macs["pointwise"]), float(macs["spatial"])
    return dict(
        pointwise_gmacs=p / 1e9,
        spatial_gmacs=s / 1e9,
        pointwise_share=p / (p + s),
        bound=(p + s) / ((1.0 - mask_ratio) * p + s),
    )


# ----------------------------------------------------------------------------------------------
# The models of the rows


class DensePair(nn.Module):
    """VideoMAC's step with the plain dense encoder on unmasked frames (losses over all patches)."""

    def __init__(self, encoder: str, decoder_dim: int = 512):
        super().__init__()
        enc = timm.create_model(encoder, num_classes=0)
        self.patch_size = int(enc.feature_info[-1]["reduction"])
        self.online = nn.ModuleDict(dict(encoder=enc, decoder=Decoder(enc.num_features, self.patch_size, decoder_dim)))
        self.target = copy.deepcopy(self.online).requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()
        return self

    def _branch(self, branch: nn.ModuleDict, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return branch["decoder"](branch["encoder"].forward_features(x), mask)

    def forward(self, frame1, frame2, mask=None):
        B, p = frame1.shape[0], self.patch_size
        none = torch.zeros(B, frame1.shape[-2] // p, frame1.shape[-1] // p, dtype=torch.bool, device=frame1.device)
        every = ~none
        pred_o = self._branch(self.online, frame1, none).float()
        with torch.no_grad():
            pred_t = self._branch(self.target, frame2, none).float()
        loss = masked_mse(pred_o, patch_targets(frame1, p, True), every)
        loss = loss + masked_mse(pred_t, patch_targets(frame2, p, True), every)
        return dict(loss=loss + masked_mse(pred_o, pred_t, every))

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        for p_t, p_o in zip(self.target.parameters(), self.online.parameters()):
            p_t.lerp_(p_o, 1.0 - momentum)


class SiamMAEViT(nn.Module):
    """Siamese MAE on ViT-S/16: both frames' visible tokens through one shared encoder, a small
    decoder with mask tokens, MSE on the masked patches (normalized pixels)."""

    def __init__(self, input_size: int, mask_ratio: float, decoder_dim: int = 256, decoder_depth: int = 2):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = timm.create_model("vit_small_patch16_224", img_size=input_size, num_classes=0)
        self.patch_size, self.mask_ratio = 16, mask_ratio
        self.num_patches = (input_size // 16) ** 2
        dim = self.encoder.embed_dim
        self.dec_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.dec_pos = nn.Parameter(torch.randn(1, self.num_patches, decoder_dim) * 0.02)
        self.dec_blocks = nn.Sequential(*[Block(decoder_dim, 8) for _ in range(decoder_depth)])
        self.dec_norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, 16 * 16 * 3)

    def forward(self, frame1, frame2, mask=None):
        enc = self.encoder
        x = torch.cat([frame1, frame2])  # shared encoder: both frames in one batch
        B, L = x.shape[0], self.num_patches
        keep = int(L * (1 - self.mask_ratio))
        order = torch.rand(B, L, device=x.device).argsort(dim=1)
        keep_idx = order[:, :keep]
        mask = torch.ones(B, L, dtype=torch.bool, device=x.device).scatter(1, keep_idx, False)
        t = enc.patch_embed(x) + enc.pos_embed[:, enc.num_prefix_tokens :]
        t = torch.gather(t, 1, keep_idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(B, -1, -1)
        t = enc.norm(enc.blocks(enc.norm_pre(torch.cat([cls, t], dim=1))))[:, 1:]
        t = self.dec_embed(t)
        full = self.mask_token.to(t.dtype).expand(B, L, -1).scatter(1, keep_idx.unsqueeze(-1).expand_as(t), t)
        pred = self.pred(self.dec_norm(self.dec_blocks(full + self.dec_pos)))
        return dict(loss=masked_mse(pred.float(), patch_targets(x, 16, True), mask))

    def update_target(self, momentum: float) -> None:
        pass  # SiamMAE has no EMA target


# ----------------------------------------------------------------------------------------------
# One configuration (runs in its own process)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def run_config(cfg: Dict) -> Dict:
    """Build one row's model and time ``cfg['steps']`` train steps on a fixed batch."""
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    B, S, ratio = cfg["batch_size"], cfg["input_size"], cfg["mask_ratio"]
    frames = torch.rand(2, B, 3, S, S, generator=torch.Generator().manual_seed(0)).to(device)
    kind = cfg["config"]
    if kind == VIT:
        model: nn.Module = SiamMAEViT(S, ratio)
        mask = None
    elif kind == "dense":
        model, mask = DensePair(cfg["model"]), None
    else:
        backend = "masked" if kind == "masked" else "visible"
        model = VideoMAC(cfg["model"], mask_ratio=ratio, backend=backend)
        grid = (S // model.patch_size, S // model.patch_size)
        mask = random_mask(B, grid, 0.0 if kind == "visible_r0" else ratio, generator=torch.Generator().manual_seed(1))
        mask = mask.to(device)
    model = model.to(device).train()
    opt = build_optimizer(model, 1.5e-4, 0.05)
    fwd = torch.compile(model) if cfg["compile"] else model
    amp = cfg["amp"]
    autocast = dict(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                    enabled=amp != "none")  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> float:
        with torch.autocast(**autocast):
            loss = fwd(frames[0], frames[1], mask)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.996)
        return float(loss.detach())

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _rss_mb()
    for _ in range(cfg["warmup"]):
        step()
    _sync(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(cfg["steps"])]
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _maxrss_mb()
    return dict(
        model=cfg["model"], config=kind, pairs_per_s=B * cfg["steps"] / dt, step_s=dt / cfg["steps"],
        peak_mem_mb=peak - base, loss=losses[-1],
    )  # fmt: skip


def _child(conn, cfg: Dict) -> None:
    try:
        conn.send(dict(ok=run_config(cfg)))
    except BaseException as e:  # report any failure to the parent as this row's error
        conn.send(dict(error=f"{type(e).__name__}: {e}", tb=traceback.format_exc()))
    finally:
        conn.close()


def _run_isolated(cfg: Dict, ctx) -> Dict:
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, cfg))
    p.start()
    child.close()
    try:
        msg = parent.recv()
    except EOFError:
        msg = dict(error="the benchmark process died (out of memory?)")
    p.join()
    if "ok" in msg:
        return msg["ok"]
    return dict(model=cfg["model"], config=cfg["config"], error=msg["error"])


# ----------------------------------------------------------------------------------------------
# The whole run


def bench_pretrain(
    models: Optional[List[str]] = None,
    batch_size: int = 8,
    input_size: int = 224,
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: str = "none",
    compile: bool = False,
    mask_ratio: float = 0.75,
    configs: Optional[List[str]] = None,
    vit: bool = True,
    isolate: bool = True,
    log=print,
) -> Dict:
    """Run every (model, config) row (and the ViT row) and return ``dict(meta, rows, flops)``."""
    models = list(models or DEFAULT_MODELS)
    configs = list(configs or CONFIGS)
    base = dict(batch_size=batch_size, input_size=input_size, steps=steps, warmup=warmup, device=device,
                amp=amp, compile=compile, mask_ratio=mask_ratio)  # fmt: skip
    todo = [dict(base, model=m, config=c) for m in models for c in configs]
    if vit:
        todo.append(dict(base, model="vit_small_patch16_224", config=VIT))
    ctx = None
    if isolate:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["videomac.bench"])  # one torch import for all rows
    rows = []
    for cfg in todo:
        t0 = time.perf_counter()
        row = _run_isolated(cfg, ctx) if isolate else run_config(cfg)
        log(f"  {cfg['model']} / {cfg['config']}: {time.perf_counter() - t0:.1f} s")
        if "error" in row:
            log(f"    failed: {row['error']}")
        rows.append(row)
    flops = {m: flop_split(m, input_size, mask_ratio) for m in models}
    _add_ratios(rows, flops)
    meta = dict(
        torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
        machine=platform.machine(), processor=platform.processor(), cpus=os.cpu_count(),
        threads=torch.get_num_threads(), device_name=_device_name(device),
        memory_method=(
            "torch.cuda.max_memory_allocated - allocated before the first step" if device.startswith("cuda")
            else "max RSS (getrusage) - RSS before the first step, one forked process per row"
        ) if isolate else "not measured (isolate=False)",
        **base,
    )  # fmt: skip
    if not isolate and not device.startswith("cuda"):
        for r in rows:
            r.pop("peak_mem_mb", None)
    return dict(meta=meta, rows=rows, flops=flops)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _add_ratios(rows: List[Dict], flops: Dict[str, Dict]) -> None:
    masked = {r["model"]: r for r in rows if r.get("config") == "masked" and "pairs_per_s" in r}
    for r in rows:
        ref = masked.get(r["model"])
        if "pairs_per_s" not in r or ref is None:
            continue
        r["speed_vs_masked"] = r["pairs_per_s"] / ref["pairs_per_s"]
        if r.get("peak_mem_mb") and ref.get("peak_mem_mb"):
            r["mem_vs_masked"] = r["peak_mem_mb"] / ref["peak_mem_mb"]
        if r["config"] == "visible" and r["model"] in flops:
            r["flop_bound"] = flops[r["model"]]["bound"]
            r["of_bound"] = r["speed_vs_masked"] / r["flop_bound"]


def format_table(result: Dict) -> str:
    """The rows as a fixed-width text table (ratios are to the same model's ``masked`` row)."""
    head = f"{'model':22s} {'config':16s} {'pairs/s':>8s} {'x masked':>8s} {'peak MB':>8s} {'x mem':>6s} " \
           f"{'FLOP bound':>10s} {'of bound':>8s}"  # fmt: skip
    lines = [head, "-" * len(head)]

    def f(v, fmt, width, suffix=""):
        return (format(v, fmt) + suffix if isinstance(v, (int, float)) else "-").rjust(width)

    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['model']:22s} {r['config']:16s} error: {r['error']}")
            continue
        lines.append(
            f"{r['model']:22s} {r['config']:16s} {f(r['pairs_per_s'], '.2f', 8)} "
            f"{f(r.get('speed_vs_masked'), '.2f', 8, 'x')} {f(r.get('peak_mem_mb'), '.0f', 8)} "
            f"{f(r.get('mem_vs_masked'), '.2f', 6, 'x')} {f(r.get('flop_bound'), '.2f', 10, 'x')} "
            f"{f(r.get('of_bound'), '.0%', 8)}"
        )
    lines.append("")
    lines.append(f"{'FLOP split':22s} {'pointwise GMACs':>16s} {'spatial GMACs':>14s} {'pointwise %':>11s} "
                 f"{'bound @ r':>9s}")  # fmt: skip
    for m, fl in result["flops"].items():
        lines.append(f"{m:22s} {fl['pointwise_gmacs']:16.3f} {fl['spatial_gmacs']:14.3f} "
                     f"{fl['pointwise_share']:11.1%} {fl['bound']:8.2f}x")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def _cmd_pretrain(args) -> int:
    quick = args.quick
    models = args.models or (QUICK_MODELS if quick else DEFAULT_MODELS)
    models = [m for part in models for m in part.split(",") if m]

    def pick(v, quick_v, full_v):
        return v if v is not None else (quick_v if quick else full_v)

    kw = dict(
        models=models,
        batch_size=pick(args.batch_size, 2, 8),
        input_size=pick(args.input_size, 64, 224),
        steps=pick(args.steps, 2, 3),
        warmup=pick(args.warmup, 1, 1),
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        mask_ratio=args.mask_ratio,
        configs=args.configs.split(",") if args.configs else None,
        vit=not args.no_vit,
        isolate=not args.no_isolate,
    )
    unknown = set(kw["configs"] or []) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")
    print(f"videomac bench pretrain: {json.dumps({k: v for k, v in kw.items() if k != 'models'})}")
    result = bench_pretrain(**kw)
    print()
    print(format_table(result))
    print(f"\nmemory: {result['meta']['memory_method']}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.out}")
    return 1 if any("error" in r for r in result["rows"]) else 0


def _cmd_propagate(args) -> int:
    try:
        from videomac.eval.bench import bench_propagation
    except ImportError as e:
        print(f"videomac bench propagate: not available (videomac.eval.bench.bench_propagation: {e})")
        return 2
    kw = dict(device=args.device)
    if args.quick:
        kw.update(num_frames=6, height=24, width=40, channels=64)
    result = bench_propagation(**kw)
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        print(f"wrote {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: sparse pretraining step, label propagation")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    pp = sub.add_parser(
        "pretrain",
        help="train-step pairs/s and peak memory: visible vs masked vs dense vs ViT-S/16 SiamMAE",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument("--models", nargs="+", help=f"encoders (default {' '.join(DEFAULT_MODELS)})")
    pp.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)} (default all)")
    pp.add_argument("--batch-size", type=int, help="frame pairs per step (default 8; quick 2)")
    pp.add_argument("--input-size", type=int, help="square input size in px (default 224; quick 64)")
    pp.add_argument("--steps", type=int, help="timed steps per row (default 3; quick 2)")
    pp.add_argument("--warmup", type=int, help="untimed steps first (default 1)")
    pp.add_argument("--mask-ratio", type=float, default=0.75)
    pp.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    pp.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    pp.add_argument("--compile", action="store_true", help="torch.compile the model of every row")
    pp.add_argument("--no-vit", action="store_true", help="skip the ViT-S/16 SiamMAE row")
    pp.add_argument("--no-isolate", action="store_true", help="run rows in this process (no CPU memory numbers)")
    pp.add_argument("--quick", action="store_true", help="smoke test: cnxv2_atto + rn18, 64 px, batch 2, 2 steps")
    pp.add_argument("--out", help="write the results as JSON")
    pp.set_defaults(func=_cmd_pretrain)

    pr = sub.add_parser("propagate", help="label-propagation frames/s (videomac.eval.bench.bench_propagation)")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--quick", action="store_true", help="small sizes")
    pr.add_argument("--out", help="write the results as JSON")
    pr.set_defaults(func=_cmd_propagate)
