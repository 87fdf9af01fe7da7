"""Per-iteration schedules and the optimizer of the paper recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from videomac.pretrain.config import PretrainConfig
from videomac.settings import choices

__all__ = ["RunPlan", "learning_rate", "ema_momentum", "EMA_SCHEDULES", "param_groups", "build_optimizer"]


def learning_rate(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then half-cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


EMA_SCHEDULES = choices(PretrainConfig, "ema_schedule")


def ema_momentum(
    step: int,
    total_steps: int,
    base: float = 0.996,
    final: float = 1.0,
    schedule: str = "cosine",
    steps_per_epoch: Optional[int] = None,
) -> float:
    """EMA momentum at optimizer step ``step``: a cosine rise from ``base`` (step 0) to ``final`` (last step).

    ``schedule="authors"`` reads that cosine at the step *within the epoch*, as the released code does
    (``momentum_schedule[data_iter_step]``), so the momentum stays within a hair of ``base`` all run;
    that is what produced the paper's Table 1.
    """
    if schedule not in EMA_SCHEDULES:
        raise ValueError(f"unknown EMA schedule {schedule!r}; available: {', '.join(EMA_SCHEDULES)}")
    if schedule == "authors":
        if not steps_per_epoch:
            raise ValueError("the authors' EMA schedule needs steps_per_epoch")
        step = step % steps_per_epoch
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Weight-decay groups as the authors build them: timm's ``param_groups_weight_decay`` (no decay for
    1-D parameters and ``.bias``), applied to the shapes of their modules. Their GRN keeps ``gamma`` and
    ``beta`` as ``(1, C)`` tensors, so both are decayed; timm's GRN holds them 1-D as ``weight``/``bias``,
    so they are moved to the decay group here. The mask token ``(1, D, 1, 1)`` is decayed under the rule."""
    from timm.layers.grn import GlobalResponseNorm
    from timm.optim import param_groups_weight_decay

    no_decay, decay = param_groups_weight_decay(model, weight_decay)
    grn = {id(p) for m in model.modules() if isinstance(m, GlobalResponseNorm) for p in m.parameters()}
    moved = [p for p in no_decay["params"] if id(p) in grn]
    no_decay["params"] = [p for p in no_decay["params"] if id(p) not in grn]
    decay["params"] = list(decay["params"]) + moved
    return [decay, no_decay]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW on :func:`param_groups`, fused (one kernel for all parameters) where torch has it for the
    parameters' devices and dtypes, else torch's default (foreach on CUDA)."""
    fused = _fused_adamw_supported(model)
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused or None)
    except (RuntimeError, TypeError):  # torch < 2.4 checks the devices here (or has no fused AdamW)
        # fresh groups: the failed constructor has already written fused=True into the first ones' dicts
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def _fused_adamw_supported(model: nn.Module) -> bool:
    """Whether fused AdamW takes every parameter. torch >= 2.4 checks only at the first ``step`` (too late
    to fall back), so the check is made here; older torch checks in the constructor."""
    try:
        from torch.optim.optimizer import _device_dtype_check_for_fused
    except ImportError:
        return True
    try:
        for p in model.parameters():
            _device_dtype_check_for_fused(p)
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class RunPlan:
    """A run's lengths and rates, from its settings and its data: micro-batches ``accum_iter`` per optimizer
    step, ``steps_per_epoch`` (full batches only), ``total_steps``, ``warmup_steps`` and ``base_lr`` (the
    paper's ``blr x effective batch / 256`` unless ``lr`` is set)."""

    accum_iter: int
    effective_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float

    @classmethod
    def of(cls, cfg: PretrainConfig, pairs: int, world: int) -> RunPlan:
        """The plan of ``cfg`` over ``pairs`` pairs on ``world`` processes; a dataset with no full step per
        epoch or a min-lr above the lr is refused."""
        effective = cfg.batch_size * cfg.accum_iter * world
        micro_per_epoch = math.ceil(pairs / world) // cfg.batch_size
        if micro_per_epoch < cfg.accum_iter:
            raise ValueError(
                f"dataset of {pairs} pairs is too small for batch {cfg.batch_size} x accum "
                f"{cfg.accum_iter} x {world} process(es): no full step per epoch; lower --batch-size "
                "add videos, or leave --pairs-per-video unset (every pair)"
            )
        steps_per_epoch = micro_per_epoch // cfg.accum_iter
        total = cfg.max_steps if cfg.max_steps else cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * steps_per_epoch)
        base_lr = cfg.lr if cfg.lr is not None else cfg.blr * effective / 256
        if cfg.min_lr > base_lr:
            raise ValueError(
                f"--min-lr {cfg.min_lr} is above the lr {base_lr:g} (--blr {cfg.blr} x "
                f"effective batch {effective} / 256): the schedule decays from the lr to the min-lr"
            )
        return cls(cfg.accum_iter, effective, steps_per_epoch, total, min(warmup, total // 2), base_lr)

    @property
    def epoch_micro_batches(self) -> int:
        """Micro-batches of an epoch (its full batches; a multiple of ``accum_iter``)."""
        return self.steps_per_epoch * self.accum_iter

    @property
    def last_epoch(self) -> int:
        """The epoch after the last one the run's steps reach into."""
        return math.ceil(self.total_steps * self.accum_iter / self.epoch_micro_batches)
