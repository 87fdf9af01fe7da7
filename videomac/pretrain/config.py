"""The settings of a pretraining run (torch-free, so the CLI can show them without loading torch)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from videomac.presets import PRESETS

__all__ = [
    "PretrainConfig", "resolve_config", "check_config", "checkpoint_candidates", "CHECKPOINT", "ENCODER",
    "METRICS", "CONFIG", "SUMMARY", "SKIPPED",
]  # fmt: skip

CHECKPOINT = "checkpoint.pt"  # the newest checkpoint; older ones kept are checkpoint-<step>.pt
ENCODER = "encoder.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
SKIPPED = "skipped.jsonl"  # inputs the data loader skipped (one JSON object per line, any process)
_OLDER = re.compile(r"^checkpoint-(\d+)\.pt$")


@dataclass
class PretrainConfig:
    """Every setting of a run; the defaults are the paper recipe (DESIGN.md §1)."""

    model: str = "videomac_cnxv2_s"
    data: Optional[str] = None  # None: the built-in procedural videos
    output_dir: str = "runs/videomac"
    input_size: int = 224
    preset: Optional[str] = None  # the --preset the run started from (recorded for model cards)
    gap: int = 1
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 1
    gamma: float = 1.0
    norm_pix_loss: bool = True
    motion_weight: float = 0.0
    drop_path: float = 0.0
    backend: str = "auto"  # sparse execution: auto (fastest measured on the device) | visible | masked (reference)
    batch_size: int = 64  # per process
    accum_iter: int = 1
    total_batch: Optional[int] = None  # if set, accum_iter = total_batch / (batch_size * world)
    epochs: int = 100
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs
    stop_after: Optional[int] = None  # stop (with a checkpoint) after this many steps of this invocation
    warmup_epochs: float = 10.0
    warmup_steps: Optional[int] = None
    blr: float = 1.0e-3
    lr: Optional[float] = None  # absolute lr; default blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    ema_base: float = 0.996
    ema_final: float = 1.0
    ema_schedule: str = "cosine"  # cosine over the run | authors (their index: step within the epoch, so ~ema_base)
    init: str = "timm"  # timm (timm's encoder init, 0.02 decoder; trains faster in short runs) | authors (presets)
    clip_grad: Optional[float] = None
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)
    device: str = "auto"
    num_workers: Optional[int] = None  # None: one per CPU core of this process (per local rank) less one
    gpu_decode: bool = False  # decode JPEG frames on the CUDA device (nvJPEG via torchvision)
    frame_units: bool = False  # frame folders served by unit like videos (each JPEG decoded ~once; ~1.3x faster)
    compile: bool = False  # torch.compile the model's forward (the train step's graph; backward follows)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    deterministic: bool = False  # deterministic kernels (bit-exact reruns and resumes on CUDA; slower)
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # checkpoint.pt and the K-1 before it (checkpoint-<step>.pt); resume falls back
    vis_every: int = 10  # epochs between reconstruction figures (and one at the end)
    pairs_per_video: Optional[int] = None  # None: every (t, t+gap) pair of every video per epoch (the authors')
    synthetic_videos: int = 32
    synthetic_frames: int = 32
    video_short_side: Optional[int] = None
    progress: bool = True
    export: bool = True
    resume: Optional[str] = None  # checkpoint to continue from

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def checkpoint_candidates(run_dir: str) -> List[str]:
    """The checkpoints of a run folder that exist, newest first: ``checkpoint.pt``, then the older ones
    kept (``checkpoint-<step>.pt``, highest step first)."""
    out = [os.path.join(run_dir, CHECKPOINT)] if os.path.isfile(os.path.join(run_dir, CHECKPOINT)) else []
    try:
        names = os.listdir(run_dir)
    except OSError:
        return out
    older = sorted(((int(m.group(1)), n) for n in names if (m := _OLDER.match(n))), reverse=True)
    return out + [os.path.join(run_dir, n) for _, n in older if os.path.isfile(os.path.join(run_dir, n))]


def resolve_config(values: Dict, preset: Optional[str] = None, resume: Optional[str] = None) -> PretrainConfig:
    """A run's config from explicit ``values`` (None = unset), over ``preset``'s recipe, over the defaults.

    ``resume``: a checkpoint, a run folder, or ``"auto"`` (the output folder's checkpoint). A resumed
    run keeps its recorded settings unless ``values`` override them. The folder holding the checkpoint
    is the run: it is where the resumed run writes, whatever ``output_dir`` its ``config.json`` records
    (a copied or moved run stays where it is); an explicit, different ``output_dir`` is refused.
    """
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown pretraining settings: {', '.join(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    merged = dict(PRESETS[preset], preset=preset) if preset else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    if resume:
        if resume == "auto":
            run_dir = path = merged.get("output_dir", PretrainConfig.output_dir)
        elif os.path.isdir(resume):
            run_dir = path = resume
        else:
            path, run_dir = resume, os.path.dirname(resume) or "."
            if not os.path.isfile(path) and not checkpoint_candidates(run_dir):
                raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        if not checkpoint_candidates(run_dir) and not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir} (expected {CHECKPOINT})")
        out = values.get("output_dir")
        if resume != "auto" and out is not None and os.path.realpath(out) != os.path.realpath(run_dir):
            raise ValueError(
                f"--resume {resume} continues the run in its own folder {run_dir}, not --output-dir {out}; "
                f"to continue in {out}, copy the run folder there and resume {out}"
            )
        config = os.path.join(run_dir, CONFIG)
        if not os.path.isfile(config):
            raise FileNotFoundError(f"--resume: {run_dir} has a checkpoint but no {CONFIG}; is it a pretraining run?")
        with open(config) as f:
            saved = json.load(f)
        skip = {"resume", "output_dir"}  # the run is where its checkpoint is, not where it was written
        saved = {k: v for k, v in saved.items() if k in fields and k not in merged and k not in skip}
        merged = {**saved, **merged, "resume": path, "output_dir": run_dir}
    return PretrainConfig(**merged)


def check_config(cfg: PretrainConfig) -> None:
    """Checks of a run's settings before the model and data are built, so a mistake is a one-line error
    at once (the trainer checks the rest)."""
    if cfg.model.startswith("videomac_"):
        patch = 16 if "_iso_" in cfg.model else 32
        if cfg.input_size <= 0 or cfg.input_size % patch:
            ok = max(patch, round(cfg.input_size / patch) * patch)
            raise ValueError(f"--input-size {cfg.input_size} must be a positive multiple of {cfg.model}'s patch size "
                             f"{patch} (e.g. {ok})")  # fmt: skip
        from videomac.masking import check_visible

        check_visible((cfg.input_size // patch,) * 2, cfg.mask_ratio, patch)
    for name in ("batch_size", "accum_iter", "gap", "decoder_dim", "decoder_depth", "save_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")

