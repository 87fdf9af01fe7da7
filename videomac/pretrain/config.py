"""The settings of a pretraining run (torch-free, so the CLI can show them without loading torch)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional

from videomac.presets import PRESETS

__all__ = ["PretrainConfig", "resolve_config", "CHECKPOINT", "ENCODER", "METRICS", "CONFIG"]

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


@dataclass
class PretrainConfig:
    """Every setting of a run; the defaults are the paper recipe (DESIGN.md §1)."""

    model: str = "videomac_cnxv2_s"
    data: Optional[str] = None  # None: the built-in procedural videos
    output_dir: str = "runs/videomac"
    input_size: int = 224
    gap: int = 1
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 1
    gamma: float = 1.0
    norm_pix_loss: bool = True
    motion_weight: float = 0.0
    drop_path: float = 0.0
    backend: str = "visible"  # sparse execution: visible | masked (the reference; same results)
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
    num_workers: int = 4
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
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


def resolve_config(values: Dict, preset: Optional[str] = None, resume: Optional[str] = None) -> PretrainConfig:
    """A run's config from explicit ``values`` (None = unset), over ``preset``'s recipe, over the defaults.

    ``resume``: a checkpoint, a run folder, or ``"auto"`` (the output folder's checkpoint). A resumed
    run keeps its recorded settings unless ``values`` override them.
    """
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown pretraining settings: {', '.join(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    merged = dict(PRESETS[preset]) if preset else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    if resume:
        path = resume
        if resume == "auto":
            path = os.path.join(merged.get("output_dir", PretrainConfig.output_dir), CHECKPOINT)
        elif os.path.isdir(resume):
            path = os.path.join(resume, CHECKPOINT)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        with open(os.path.join(os.path.dirname(path), CONFIG)) as f:
            saved = json.load(f)
        saved = {k: v for k, v in saved.items() if k in fields and k not in merged and k != "resume"}
        merged = {**saved, **merged, "resume": path}
        merged.setdefault("output_dir", os.path.dirname(path))
    return PretrainConfig(**merged)
