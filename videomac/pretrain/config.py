"""The settings of a pretraining run (torch-free, so the CLI can show them without loading torch)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from videomac.outputs import (  # the run folder's names live with the output rule that guards them
    CHECKPOINT,
    CONFIG,
    ENCODER,
    METRICS,
    SKIPPED,
    SUMMARY,
    checkpoint_candidates,
)
from videomac.presets import PRESETS
from videomac.settings import check, setting

__all__ = [
    "PretrainConfig",
    "resolve_config",
    "merge_settings",
    "resume_target",
    "check_config",
    "checkpoint_candidates",
    "CHECKPOINT",
    "ENCODER",
    "METRICS",
    "CONFIG",
    "SUMMARY",
    "SKIPPED",
]


@dataclass
class PretrainConfig:
    """Every setting of a run, declared once (type, default, range, choices, help: :mod:`videomac.settings`
    checks them and makes the ``videomac pretrain`` options); the defaults are the paper recipe
    (docs/design.md §1)."""

    model: str = setting("videomac_cnxv2_s", help="encoder name (any videomac_* or timm ConvNet)")
    data: Optional[str] = setting(None, help="frame folders root, video folder, list file, or one video")
    output_dir: str = setting("runs/videomac", help="run folder")
    input_size: int = setting(224, gt=0, group="method")
    preset: Optional[str] = setting(
        None, choices=sorted(PRESETS), help="set the whole paper recipe for a backbone"
    )  # recorded in the run, for model cards
    gap: int = setting(1, ge=1, group="method", help="frame distance within a pair")
    mask_ratio: float = setting(0.75, ge=0.0, lt=1.0, group="method")
    decoder_dim: int = setting(512, ge=1, group="method")
    decoder_depth: int = setting(1, ge=1, group="method")
    gamma: float = setting(1.0, ge=0.0, group="method", help="weight of the reconstruction-consistency loss")
    norm_pix_loss: bool = setting(
        True, group="method", help="targets normalised per patch (mean/variance, as MAE and the paper)"
    )
    motion_weight: float = setting(
        0.0, ge=0.0, group="method", help="MAM2 motion (RGB difference) target weight; 0 = off"
    )
    drop_path: float = setting(0.0, ge=0.0, lt=1.0, group="method")
    backend: str = setting(
        "auto",
        choices=("auto", "visible", "masked"),  # videomac.sparse.BACKENDS, held equal by tests/test_settings.py
        group="method",
        help="encoder execution: every layer on visible positions only, masked-dense (the reference), or auto: "
        "the one measured fastest on the device",
    )
    batch_size: int = setting(64, ge=1, group="schedule", help="per process")
    accum_iter: int = setting(1, ge=1, group="schedule", help="gradient accumulation steps")
    total_batch: Optional[int] = setting(
        None, ge=1, group="schedule", help="effective batch; sets --accum-iter from batch and world size"
    )
    epochs: int = setting(100, ge=1, group="schedule")
    max_steps: Optional[int] = setting(None, ge=1, group="schedule", help="optimizer steps (overrides --epochs)")
    stop_after: Optional[int] = setting(
        None, ge=1, group="schedule", help="stop after N steps of this invocation (resume later)"
    )
    warmup_epochs: float = setting(10.0, ge=0.0, group="schedule")
    warmup_steps: Optional[int] = setting(None, ge=0, group="schedule")
    blr: float = setting(1.0e-3, gt=0.0, group="schedule", help="base lr: lr = blr * effective batch / 256")
    lr: Optional[float] = setting(None, gt=0.0, group="schedule", help="absolute lr (overrides --blr)")
    min_lr: float = setting(0.0, ge=0.0, group="schedule")  # at most the lr (checked once the lr is known)
    weight_decay: float = setting(0.05, ge=0.0, group="schedule")
    ema_base: float = setting(
        0.996, ge=0.0, le=1.0, group="schedule", help="EMA momentum at step 0 (rises to 1 on a cosine)"
    )
    ema_final: float = setting(1.0, ge=0.0, le=1.0, cli=False)  # the cosine's end: 1, as MAE and the authors
    ema_schedule: str = setting(
        "cosine",
        choices=("cosine", "authors"),
        group="schedule",
        help="cosine over the whole run, or as the authors' code indexes it (the step within the epoch, so the "
        "momentum stays ~ema-base)",
    )
    init: str = setting(
        "timm",
        choices=("authors", "timm"),
        group="schedule",
        help="online model init: timm's encoder init + 0.02 decoder, or the authors' rules",
    )
    clip_grad: Optional[float] = setting(None, gt=0.0, group="schedule")
    amp: str = setting("none", choices=("none", "bf16", "fp16"), group="system")  # fp16 on CUDA only
    device: str = setting("auto", choices=("auto", "cuda", "cpu"), group="system")
    num_workers: Optional[int] = setting(
        None, ge=0, group="system", help="DataLoader workers (none: the CPU cores of this process less one)"
    )
    gpu_decode: bool = setting(
        False,
        group="system",
        help="decode JPEG frames on the CUDA device (torchvision nvJPEG) instead of in the CPU workers",
    )
    frame_units: bool = setting(
        False,
        group="system",
        help="frame folders served like videos: runs of consecutive pairs per worker, each JPEG decoded about "
        "once instead of twice (faster; batches mix ~8 videos per worker instead of independent pairs)",
    )
    compile: bool = setting(
        False, group="system", help="torch.compile the model (first steps slower while it compiles)"
    )
    compile_mode: str = setting(
        "default",
        choices=("default", "reduce-overhead", "max-autotune"),
        group="system",
        help="torch.compile mode with --compile; reduce-overhead captures CUDA graphs",
    )
    deterministic: bool = setting(
        False,
        group="system",
        help="deterministic kernels: a rerun or a resume on the same GPU gives the same weights, bit for bit (slower)",
    )
    seed: int = setting(0, ge=0, group="system")
    log_every: int = setting(10, ge=1, group="system")
    save_every: int = setting(500, ge=1, group="system", help="steps between checkpoints")
    keep_checkpoints: int = setting(
        2, ge=1, group="system", help="checkpoints kept: checkpoint.pt and the K-1 before it"
    )
    vis_every: int = setting(
        10, ge=0, group="system", help="epochs between reconstruction figures"
    )  # and one at the end; 0: at the end only
    pairs_per_video: Optional[int] = setting(
        None,
        ge=1,
        group="system",
        help="random pairs drawn from each video per epoch (none: every (t, t+gap) pair, the authors')",
    )
    synthetic_videos: int = setting(32, ge=1, group="system", help="number of built-in videos (no --data)")
    synthetic_frames: int = setting(32, ge=2, group="system", help="frames per built-in video")
    video_short_side: Optional[int] = setting(
        None, ge=1, group="system", help="downscale decoded videos to this short side"
    )
    progress: bool = setting(
        True,
        group="system",
        help="a progress bar on a terminal, one log line per --log-every steps otherwise",
    )
    export: bool = setting(True, group="system", help="write encoder.safetensors at the end")
    resume: Optional[str] = setting(None, cli=False)  # the checkpoint continued from (--resume)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


# Settings a resumed run may change: how long it runs, how it is fed, logged and saved, and how its kernels
# run. Every other setting (the method, the schedule's shape, the data) is the checkpoint's.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "max_steps",
        "epochs",
        "stop_after",
        "num_workers",
        "log_every",
        "save_every",
        "keep_checkpoints",
        "vis_every",
        "progress",
        "export",
        "device",
        "compile",
        "compile_mode",
        "gpu_decode",
        "deterministic",
        "output_dir",
        "resume",
    }
)


def resolve_config(values: Dict, preset: Optional[str] = None) -> PretrainConfig:
    """A fresh run's config from explicit ``values`` (None = unset), over ``preset``'s recipe, over the
    defaults. A resumed run's config is :func:`videomac.pretrain.checkpoint.resume_config` (the
    checkpoint's own config is the truth; reading it needs torch, which this module does not import)."""
    return PretrainConfig(**merge_settings(values, preset))


def merge_settings(values: Dict, preset: Optional[str] = None) -> Dict:
    """The given ``values`` (None = unset) over ``preset``'s recipe, as a dict of settings."""
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown pretraining settings: {', '.join(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    merged = dict(PRESETS[preset], preset=preset) if preset else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    return merged


def resume_target(values: Dict, resume: str) -> Tuple[str, str]:
    """``(checkpoint or folder, run folder)`` of ``--resume`` (a checkpoint, a run folder, or ``"auto"``:
    the output folder's), refusing an older checkpoint while a newer one exists (resuming it would
    overwrite the newer one) and an explicit ``output_dir`` other than the run's own folder (the folder
    holding the checkpoint is the run, wherever it was first written)."""
    if resume == "auto":
        run_dir = path = values.get("output_dir") or PretrainConfig.output_dir
    elif os.path.isdir(resume):
        run_dir = path = resume
    else:
        path, run_dir = resume, os.path.dirname(resume) or "."
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir} (expected {CHECKPOINT})")
    if path != run_dir and os.path.realpath(path) != os.path.realpath(candidates[0]):
        raise ValueError(
            f"--resume {path}: {candidates[0]} is newer, and the resumed run would overwrite it; to continue from "
            f"the older one, copy {run_dir} to a new folder, delete the newer checkpoints there and resume the copy"
        )
    out = values.get("output_dir")
    if resume != "auto" and out is not None and os.path.realpath(out) != os.path.realpath(run_dir):
        raise ValueError(
            f"--resume {resume} continues the run in its own folder {run_dir}, not --output-dir {out}; "
            f"to continue in {out}, copy the run folder there and resume {out}"
        )
    return path, run_dir


def check_config(cfg: PretrainConfig) -> None:
    """Every setting's type and declared range, then the checks between settings, before any data is read
    or a model built, so a mistake is a one-line ``ValueError`` naming the flag. Torch is loaded only for
    the last check, the input size against the model's own stride."""
    check(cfg)
    if cfg.lr is not None and cfg.min_lr > cfg.lr:
        raise ValueError(f"--min-lr {cfg.min_lr} is above --lr {cfg.lr}: the schedule decays from the lr to the min-lr")
    if cfg.data is None and cfg.synthetic_frames <= cfg.gap:
        raise ValueError(
            f"--synthetic-frames {cfg.synthetic_frames} leaves no pair --gap {cfg.gap} apart; "
            f"use at least {cfg.gap + 1}"
        )
    # Last, as the only check that needs the model (and so torch): its stride, read from its feature_info.
    from videomac.models.names import model_stride

    patch = model_stride(cfg.model)
    if patch:
        if cfg.input_size % patch:
            ok = max(patch, round(cfg.input_size / patch) * patch)
            raise ValueError(
                f"--input-size {cfg.input_size} must be a positive multiple of {cfg.model}'s patch size "
                f"{patch} (e.g. {ok})"
            )
        from videomac.masking import check_visible

        check_visible((cfg.input_size // patch,) * 2, cfg.mask_ratio, patch)
