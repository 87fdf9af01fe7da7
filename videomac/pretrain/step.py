"""One training step, as ``videomac pretrain`` runs it and ``videomac bench pretrain`` times it: forward
under autocast, backward through the AMP scaler (scaled by the accumulation), and on the micro-batch that
ends an accumulation the optimizer step and the EMA update of the target."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

__all__ = ["Trainable", "train_step"]  # the errors: videomac.pretrain.train


class TrainingError(RuntimeError):
    """A run that failed while training (the command exits 1; the last good checkpoint is intact)."""

    exit_code = 1


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The loss became NaN or infinite; the weights were not updated with it."""


class DataLoadingError(TrainingError):
    """Loading a batch failed: a DataLoader worker died (out of memory, killed) or raised, inputs vanished."""


@dataclass
class Trainable:
    """What a step updates and how: ``model`` (``online`` branch and ``update_target``), ``forward`` (the
    model, maybe DDP-wrapped and compiled), its optimizer and AMP scaler. ``ddp``: the DDP module whose
    gradient all-reduce waits for the last micro-batch of an accumulation; ``all_finite``: whether a loss
    is finite on every rank (so all ranks stop together)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    forward: Optional[Callable] = None
    autocast: Dict = field(default_factory=lambda: dict(device_type="cpu", enabled=False))
    accum_iter: int = 1
    clip_grad: Optional[float] = None
    cuda_graphs: bool = False
    ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
    all_finite: Optional[Callable[[torch.Tensor], bool]] = None  # None: this process only

    def __post_init__(self) -> None:
        self.forward = self.forward or self.model


def train_step(t: Trainable, inputs, lr: float, momentum: float, update: bool = True) -> Dict[str, torch.Tensor]:
    """Forward and backward of one micro-batch ``forward(*inputs)``; with ``update`` (the micro-batch that
    ends an accumulation) clip, step the optimizer at ``lr`` and move the target by EMA at ``momentum``.
    Returns the model's outputs; a non-finite loss raises :class:`NonFiniteLossError` before any weight
    changes."""
    for g in t.optimizer.param_groups:
        g["lr"] = lr
    # DDP all-reduces gradients only on the micro-batch that ends an accumulation
    no_sync = t.ddp.no_sync() if (t.ddp is not None and not update) else contextlib.nullcontext()
    with no_sync:
        if t.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step begins
        with torch.autocast(**t.autocast):
            out = t.forward(*inputs)
        loss = out["loss"]
        finite = torch.isfinite(loss.detach())
        t.scaler.scale(loss / t.accum_iter).backward()
    # checked once the backward is queued, so the device is not left idle while we wait;
    # still before the optimizer step: a non-finite loss never reaches the weights
    if not (t.all_finite(finite) if t.all_finite else bool(finite.item())):
        raise NonFiniteLossError(f"loss is {loss.item()}")
    if update:
        if t.clip_grad:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(getattr(t.model, "online", t.model).parameters(), t.clip_grad)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        t.model.update_target(momentum)
    return out
