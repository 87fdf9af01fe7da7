"""``videomac bench pretrain``: one full train step per configuration, side by side in one run
(see :mod:`videomac.bench` for what each row measures)."""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import platform
import statistics
import time
import traceback
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn

import videomac.models  # noqa: F401  (registers the videomac encoders with timm)
from videomac.bench import CONFIGS, DEFAULT_MODELS, QUICK_MODELS, VIT
from videomac.bench.common import device_name, maxrss_mb, rss_mb, sync
from videomac.files import atomic_file
from videomac.masking import num_visible, random_mask
from videomac.pretrain.model import Decoder, VideoMAC, masked_mse, patch_targets
from videomac.pretrain.schedule import build_optimizer
from videomac.pretrain.step import Trainable, train_step
from videomac.sparse.packed import plan

__all__ = ["LAUNCHES", "bench_pretrain", "flop_split", "format_table", "profile_steps", "resolve_options", "step_flops"]


# ----------------------------------------------------------------------------------------------
# FLOP bound


def flop_split(name: str, input_size: int = 224, mask_ratio: float = 0.75) -> Dict[str, float]:
    """Encoder MACs per image in pointwise (Linear, 1x1 conv) vs spatial convs, and the best possible
    visible/masked speed ratio if time were proportional to MACs.

    ``bound``: the MACs the masked backend runs (every layer on the full map) over those the visible
    backend runs: every layer computes the visible fraction ``v = int(L * (1 - r)) / L`` of its outputs
    (L patches; tiled convs too: a tile's halo is read, not computed), except layers that
    :func:`videomac.sparse.packed.plan` leaves dense. So ``1 / v`` (4.08 at r = 0.75 on 7x7)
    when every layer is sparse. ``bound_pointwise_only``: ``(P + S) / (v P + S)``, the bound when only
    pointwise layers skip masked positions (the visible backend before sparse spatial convs)."""
    model = timm.create_model(name, num_classes=0).eval()
    patch = int(model.feature_info[-1]["reduction"])
    grid = input_size // patch
    visible_frac = num_visible(grid * grid, mask_ratio) / (grid * grid)
    macs = {"pointwise": 0, "spatial": 0, "visible": 0.0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Linear):
            n = out.numel() * m.in_features
            macs["pointwise"] += n
            macs["visible"] += n * visible_frac
            return
        k = m.kernel_size[0] * m.kernel_size[1]
        n = out.numel() * (m.in_channels // m.groups) * k
        macs["pointwise" if k == 1 else "spatial"] += n
        hw = tuple(inputs[0].shape[-2:])
        block = (hw[0] // grid, hw[1] // grid)
        sparse = min(block) > 0 and (k == 1 or plan(m, hw, block, torch.device("cpu")) != "dense")
        macs["visible"] += n * (visible_frac if sparse else 1.0)

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
        visible_fraction=visible_frac,
        visible_gmacs=macs["visible"] / 1e9,
        bound=(p + s) / macs["visible"],
        bound_pointwise_only=(p + s) / (visible_frac * p + s),
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

LR = 1.5e-4  # one fixed lr: the rows compare speed


def run_config(cfg: Dict) -> Dict:
    """Build one row's model and time ``cfg['steps']`` train steps on a fixed batch."""
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    B, S, ratio = cfg["batch_size"], cfg["input_size"], cfg["mask_ratio"]
    frames = torch.rand(2, B, 3, S, S, generator=torch.Generator().manual_seed(0)).to(device)
    kind = cfg["config"]
    keep = None
    if kind == VIT:
        model: nn.Module = SiamMAEViT(S, ratio)
        mask = None
    elif kind == "dense":
        model, mask = DensePair(cfg["model"]), None
    else:
        backend = "masked" if kind == "masked" else "visible"
        model = VideoMAC(cfg["model"], mask_ratio=ratio, backend=backend)
        grid = (S // model.patch_size, S // model.patch_size)
        r = 0.0 if kind == "visible_r0" else ratio
        mask = random_mask(B, grid, r, generator=torch.Generator().manual_seed(1)).to(device)
        keep = num_visible(grid[0] * grid[1], r)  # static packed sizes: no host sync, one graph compiled
    model = model.to(device).train()
    opt = build_optimizer(model, LR, 0.05)
    mode = cfg.get("compile_mode") or "default"
    fwd = torch.compile(model, mode=mode) if cfg["compile"] else model
    graphs = cfg["compile"] and mode == "reduce-overhead" and device.type == "cuda"
    args = (mask, keep) if kind not in (VIT, "dense") else (mask,)
    amp = cfg["amp"]
    autocast = dict(
        device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16, enabled=amp != "none"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    # the step `videomac pretrain` runs (graphs: each step marks a new CUDA graph step)
    trainable = Trainable(model, opt, scaler, forward=fwd, autocast=autocast, cuda_graphs=graphs)

    def step() -> float:
        return float(train_step(trainable, (frames[0], frames[1], *args), lr=LR, momentum=0.996)["loss"].detach())

    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = rss_mb()
    first = None
    for i in range(cfg["warmup"]):
        t0 = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - t0 if i == 0 else first
    sync(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(cfg["steps"])]
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else maxrss_mb()
    row = dict(
        model=cfg["model"],
        config=kind,
        pairs_per_s=B * cfg["steps"] / dt,
        step_s=dt / cfg["steps"],
        peak_mem_mb=peak - base,
        loss=losses[-1],
    )
    if cfg["compile"] and first is not None:  # the first step compiles (forward and backward graphs)
        row["compile_s"] = max(first - dt / cfg["steps"], 0.0)
    if cfg.get("profile"):
        row.update(profile_steps(step, device, os.path.join(cfg["profile"], f"profile_{cfg['model']}_{kind}.txt")))
    return row


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")  # profiler names of a kernel launch


def profile_steps(step, device: torch.device, path: str, steps: int = 2) -> Dict:
    """torch.profiler over ``steps`` more steps: the operator table (by device time on CUDA, else by CPU
    time) to ``path``, and per step the kernel launches and the time the device was busy (CUDA), or the
    operators dispatched (CPU). Many launches and a device busy for a fraction of the step's wall time
    mean the step is bound by dispatch on the host, not by the device."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    ka = prof.key_averages()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out: Dict = dict(profile=path)
    if cuda:
        attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
        busy = sum(getattr(e, attr) for e in ka if e.device_type.name == "CUDA")
        out.update(
            device_busy_ms_per_step=busy / 1e3 / steps,
            launches_per_step=sum(e.count for e in ka if e.key in LAUNCHES) / steps,
        )
        table = ka.table(sort_by=attr, row_limit=40, max_name_column_width=60)
    else:
        out["ops_per_step"] = sum(e.count for e in ka if e.key.startswith("aten::")) / steps
        table = ka.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(table)
    return out


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
    compile_mode: str = "default",
    mask_ratio: float = 0.75,
    configs: Optional[List[str]] = None,
    vit: bool = True,
    isolate: bool = True,
    profile: Optional[str] = None,
    repeats: int = 1,
    log=print,
) -> Dict:
    """Run every (model, config) row (and the ViT row) and return ``dict(meta, rows, flops)``.
    ``profile``: a folder for each row's torch.profiler table (see :func:`profile_steps`, first round only).
    ``repeats``: rounds of all rows, interleaved, so that a change of the machine's load hits every row of
    a round alike; each row reports its median pairs/s and the median of its per-round ratios."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    models = list(models or DEFAULT_MODELS)
    configs = list(configs or CONFIGS)
    base = dict(
        batch_size=batch_size,
        input_size=input_size,
        steps=steps,
        warmup=warmup,
        device=device,
        amp=amp,
        compile=compile,
        compile_mode=compile_mode,
        mask_ratio=mask_ratio,
        profile=profile,
    )
    todo = [dict(base, model=m, config=c) for m in models for c in configs]
    if vit:
        todo.append(dict(base, model="vit_small_patch16_224", config=VIT))
    ctx = None
    if isolate:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["videomac.bench.pretrain"])  # one torch import for all rows
    flops = {m: flop_split(m, input_size, mask_ratio) for m in models}
    rounds = []
    for k in range(repeats):
        round_rows = []
        for cfg in todo:
            cfg = dict(cfg, profile=profile if k == 0 else None)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            t0 = time.perf_counter()
            row = _run_isolated(cfg, ctx) if isolate else run_config(cfg)
            prefix = f"  round {k + 1}/{repeats}:" if repeats > 1 else " "
            log(f"{prefix} {cfg['model']} / {cfg['config']}: {time.perf_counter() - t0:.1f} s")
            if "error" in row:
                log(f"    failed: {row['error']}")
            row["load"] = load
            round_rows.append(row)
        _add_ratios(round_rows, flops)
        rounds.append(round_rows)
    rows = [_median_row([r[i] for r in rounds]) for i in range(len(todo))]
    meta = dict(
        torch=torch.__version__,
        timm=timm.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor(),
        cpus=os.cpu_count(),
        threads=torch.get_num_threads(),
        device_name=device_name(device),
        memory_method=(
            "torch.cuda.max_memory_allocated - allocated before the first step"
            if device.startswith("cuda")
            else "max RSS (getrusage) - RSS before the first step, one forked process per row"
        )
        if isolate
        else "not measured (isolate=False)",
        repeats=repeats,
        **base,
    )
    if not isolate and not device.startswith("cuda"):
        for r in rows:
            r.pop("peak_mem_mb", None)
            r.pop("mem_vs_masked", None)
    return dict(meta=meta, rows=rows, flops=flops)


def step_flops(split: Dict[str, float], config: str) -> float:
    """Encoder FLOPs of one pair's train step: the online encoder's forward and backward (3 forwards) and
    the target's forward, 2 FLOPs per MAC; the visible fraction for ``visible``, every position otherwise."""
    gmacs = split["visible_gmacs"] if config == "visible" else split["pointwise_gmacs"] + split["spatial_gmacs"]
    return 2 * 4 * gmacs * 1e9


def _add_ratios(rows: List[Dict], flops: Dict[str, Dict]) -> None:
    masked = {r["model"]: r for r in rows if r.get("config") == "masked" and "pairs_per_s" in r}
    for r in rows:
        ref = masked.get(r["model"])
        if "pairs_per_s" not in r or ref is None:
            continue
        r["speed_vs_masked"] = r["pairs_per_s"] / ref["pairs_per_s"]
        if r.get("peak_mem_mb") and ref.get("peak_mem_mb"):
            r["mem_vs_masked"] = r["peak_mem_mb"] / ref["peak_mem_mb"]
        if r["model"] in flops:
            r["encoder_tflops"] = r["pairs_per_s"] * step_flops(flops[r["model"]], r["config"]) / 1e12
        if r["config"] == "visible" and r["model"] in flops:
            r["flop_bound"] = flops[r["model"]]["bound"]
            r["of_bound"] = r["speed_vs_masked"] / r["flop_bound"]


def _median_row(runs: List[Dict]) -> Dict:
    """One row from its rounds: the round of median pairs/s, with the median of the per-round ratios."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    if len(runs) == 1:
        return runs[0]
    mid = statistics.median_low(r["pairs_per_s"] for r in runs)
    row = dict(next(r for r in runs if r["pairs_per_s"] == mid))
    row["pairs_per_s_runs"] = [r["pairs_per_s"] for r in runs]
    row["load_runs"] = [r["load"] for r in runs]
    if all("speed_vs_masked" in r for r in runs):
        row["speed_vs_masked_runs"] = [r["speed_vs_masked"] for r in runs]
        row["speed_vs_masked"] = statistics.median(row["speed_vs_masked_runs"])
        if "flop_bound" in row:
            row["of_bound"] = row["speed_vs_masked"] / row["flop_bound"]
    return row


def format_table(result: Dict) -> str:
    """The rows as a fixed-width text table (ratios are to the same model's ``masked`` row)."""
    head = (
        f"{'model':22s} {'config':16s} {'pairs/s':>8s} {'x masked':>8s} {'peak MB':>8s} {'x mem':>6s} "
        f"{'FLOP bound':>10s} {'of bound':>8s} {'TFLOP/s':>8s} {'compile s':>9s}"
    )
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
            f"{f(r.get('of_bound'), '.0%', 8)} {f(r.get('encoder_tflops'), '.1f', 8)} "
            f"{f(r.get('compile_s'), '.1f', 9)}"
        )
    lines.append("")
    loads = [x for r in result["rows"] for x in r.get("load_runs", [r.get("load")]) if x is not None]
    if result["meta"].get("repeats", 1) > 1:
        lines.append(f"medians of {result['meta']['repeats']} interleaved rounds; x masked per round:")
        for r in result["rows"]:
            if "speed_vs_masked_runs" in r and r["config"] != "masked":
                runs = ", ".join(f"{x:.2f}" for x in r["speed_vs_masked_runs"])
                lines.append(f"  {r['model']} / {r['config']}: {runs}")
    if loads:
        lines.append(
            f"load average (1 min) at the start of each row: {min(loads):.1f}-{max(loads):.1f} "
            f"on {result['meta']['cpus']} CPUs"
        )
        lines.append("")
    lines.append(
        f"{'FLOP split':22s} {'pointwise GMACs':>16s} {'spatial GMACs':>14s} {'pointwise %':>11s} "
        f"{'visible GMACs':>13s} {'bound @ r':>9s} {'pointwise-only bound':>20s}"
    )
    for m, fl in result["flops"].items():
        lines.append(
            f"{m:22s} {fl['pointwise_gmacs']:16.3f} {fl['spatial_gmacs']:14.3f} "
            f"{fl['pointwise_share']:11.1%} {fl['visible_gmacs']:13.3f} {fl['bound']:8.2f}x "
            f"{fl['bound_pointwise_only']:19.2f}x"
        )
    return "\n".join(lines)


def resolve_options(
    quick: bool = False, models=None, configs=None, batch_size=None, input_size=None, steps=None, warmup=None, **rest
) -> Dict:
    """:func:`bench_pretrain` keywords from options where None means "the default" (``quick``: a smoke test)."""

    def pick(v, quick_v, full_v):
        return v if v is not None else (quick_v if quick else full_v)

    models = [m for part in (models or (QUICK_MODELS if quick else DEFAULT_MODELS)) for m in part.split(",") if m]
    configs = configs.split(",") if isinstance(configs, str) else configs
    unknown = set(configs or []) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")
    return dict(
        models=models,
        configs=configs,
        batch_size=pick(batch_size, 2, 8),
        input_size=pick(input_size, 64, 224),
        steps=pick(steps, 2, 5),
        warmup=pick(warmup, 1, 2),
        **rest,
    )
