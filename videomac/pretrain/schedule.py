"""Per-iteration schedules and the optimizer of the paper recipe."""

from __future__ import annotations

import math
from typing import Iterable, List

import torch
import torch.nn as nn

__all__ = ["learning_rate", "ema_momentum", "param_groups", "build_optimizer"]


def learning_rate(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then half-cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine rise of the EMA momentum from ``base`` (step 0) to ``final`` (last step)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ("mask_token",)) -> List[dict]:
    """Two groups: weight decay on weights, none on norms, biases (1-D params) and mask tokens."""
    skip = tuple(no_decay_names)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(s in name for s in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)
