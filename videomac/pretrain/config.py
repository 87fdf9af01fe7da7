"""The settings of a pretraining run (torch-free, so the CLI can show them without loading torch)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
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


def _f(default, ge=None, gt=None, le=None, lt=None, choices=None):
    """A setting with its valid range (checked by :func:`check_config` for every field alike)."""
    rule = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items() if v is not None}
    return field(default=default, metadata=rule)


@dataclass
class PretrainConfig:
    """Every setting of a run; the defaults are the paper recipe (docs/design.md §1). Each numeric setting
    declares its valid range here; :func:`check_config` enforces them all."""

    model: str = "videomac_cnxv2_s"
    data: Optional[str] = None  # None: the built-in procedural videos
    output_dir: str = "runs/videomac"
    input_size: int = _f(224, gt=0)
    preset: Optional[str] = None  # the --preset the run started from (recorded for model cards)
    gap: int = _f(1, ge=1)
    mask_ratio: float = _f(0.75, ge=0.0, lt=1.0)
    decoder_dim: int = _f(512, ge=1)
    decoder_depth: int = _f(1, ge=1)
    gamma: float = _f(1.0, ge=0.0)
    norm_pix_loss: bool = True
    motion_weight: float = _f(0.0, ge=0.0)
    drop_path: float = _f(0.0, ge=0.0, lt=1.0)
    # sparse execution: auto (fastest measured on the device) | visible | masked (reference)
    backend: str = _f("auto", choices=("auto", "visible", "masked"))
    batch_size: int = _f(64, ge=1)  # per process
    accum_iter: int = _f(1, ge=1)
    total_batch: Optional[int] = _f(None, ge=1)  # if set, accum_iter = total_batch / (batch_size * world)
    epochs: int = _f(100, ge=1)
    max_steps: Optional[int] = _f(None, ge=1)  # optimizer steps; overrides epochs
    stop_after: Optional[int] = _f(None, ge=1)  # stop (with a checkpoint) after this many steps of this invocation
    warmup_epochs: float = _f(10.0, ge=0.0)
    warmup_steps: Optional[int] = _f(None, ge=0)
    blr: float = _f(1.0e-3, gt=0.0)
    lr: Optional[float] = _f(None, gt=0.0)  # absolute lr; default blr * effective batch / 256
    min_lr: float = _f(0.0, ge=0.0)  # at most the lr (checked once the lr is known)
    weight_decay: float = _f(0.05, ge=0.0)
    ema_base: float = _f(0.996, ge=0.0, le=1.0)
    ema_final: float = _f(1.0, ge=0.0, le=1.0)
    # cosine over the run | authors (their index: step within the epoch, so ~ema_base)
    ema_schedule: str = _f("cosine", choices=("cosine", "authors"))
    # timm (timm's encoder init, 0.02 decoder; trains faster in short runs) | authors (presets)
    init: str = _f("timm", choices=("timm", "authors"))
    clip_grad: Optional[float] = _f(None, gt=0.0)
    amp: str = _f("none", choices=("none", "bf16", "fp16"))  # fp16 on CUDA only
    device: str = _f("auto", choices=("auto", "cuda", "cpu"))
    num_workers: Optional[int] = _f(None, ge=0)  # None: one per CPU core of this process (per local rank) less one
    gpu_decode: bool = False  # decode JPEG frames on the CUDA device (nvJPEG via torchvision)
    frame_units: bool = False  # frame folders served by unit like videos (each JPEG decoded ~once; ~1.3x faster)
    compile: bool = False  # torch.compile the model's forward (the train step's graph; backward follows)
    # default | reduce-overhead (CUDA graphs) | max-autotune
    compile_mode: str = _f("default", choices=("default", "reduce-overhead", "max-autotune"))
    deterministic: bool = False  # deterministic kernels (bit-exact reruns and resumes on CUDA; slower)
    seed: int = _f(0, ge=0)
    log_every: int = _f(10, ge=1)
    save_every: int = _f(500, ge=1)  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = _f(2, ge=1)  # checkpoint.pt and the K-1 before it (checkpoint-<step>.pt)
    vis_every: int = _f(10, ge=0)  # epochs between reconstruction figures (and one at the end); 0: at the end only
    # None: every (t, t+gap) pair of every video per epoch (the authors')
    pairs_per_video: Optional[int] = _f(None, ge=1)
    synthetic_videos: int = _f(32, ge=1)
    synthetic_frames: int = _f(32, ge=2)
    video_short_side: Optional[int] = _f(None, ge=1)
    progress: bool = True
    export: bool = True
    resume: Optional[str] = None  # checkpoint to continue from

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


_BOUNDS = dict(
    ge=("at least", lambda v, b: v >= b),
    gt=("above", lambda v, b: v > b),
    le=("at most", lambda v, b: v <= b),
    lt=("below", lambda v, b: v < b),
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(f: dataclasses.Field, value) -> None:
    """One setting against its declared type and range: a ValueError naming the flag otherwise."""
    kind = str(f.type).replace("Optional[", "").rstrip("]")
    if value is None:
        if "Optional" in str(f.type):
            return
        raise ValueError(f"{_flag(f.name)} must be set (got none)")
    if kind in ("int", "float"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind == "int" and not isinstance(value, int)):
            raise ValueError(f"{_flag(f.name)} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{_flag(f.name)} must be a finite number, got {value}")
    elif kind in ("str", "bool") and not isinstance(value, str if kind == "str" else bool):
        raise ValueError(f"{_flag(f.name)} must be a {kind}, got {value!r}")
    for key, (words, ok) in _BOUNDS.items():
        if key in f.metadata and not ok(value, f.metadata[key]):
            raise ValueError(f"{_flag(f.name)} must be {words} {f.metadata[key]}, got {value}")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise ValueError(f"{_flag(f.name)} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")


def check_config(cfg: PretrainConfig) -> None:
    """Every setting's type and declared range, then the checks between settings, before any data is read
    or a model built, so a mistake is a one-line ``ValueError`` naming the flag. Torch is loaded only for
    the last check, the input size against the model's own stride."""
    for f in dataclasses.fields(PretrainConfig):
        _check_field(f, getattr(cfg, f.name))
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
