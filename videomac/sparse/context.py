"""What every sparse layer shares: the mask of the current forward pass and the mixin that marks a
converted layer. Both backends (:mod:`.masked`, :mod:`.visible`) build on this module."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from videomac.masking import upsample_mask

__all__ = ["MaskContext", "SparseLayer", "update_running_stats"]


class MaskContext:
    """The mask of the current forward pass, shared by all sparse layers of one encoder."""

    def __init__(self) -> None:
        self.active: Optional[torch.Tensor] = None  # (B, h, w) bool, True = visible
        self.keep: Optional[int] = None  # visible cells of every sample, when the caller knows it
        self.packed = True  # False: visible-converted layers run as the masked backend (backend 'auto')
        self._cache: Dict[Tuple, object] = {}

    def set(self, mask: torch.Tensor, keep: Optional[int] = None) -> None:
        """Set the mask (True = masked). ``keep``: the number of visible cells of *every* sample (as
        :func:`~videomac.masking.random_mask` makes), so the packed sizes need no look at the mask's values
        (no host sync; what a compiled step needs). It is checked on the device, asynchronously. Without
        it the visible backend reads the counts once (one sync) and pads unequal samples exactly."""
        self.active = ~mask
        self.keep = None
        if keep is not None:
            cells = mask.shape[1] * mask.shape[2]
            if not 0 <= int(keep) <= cells:
                raise ValueError(f"keep={keep} visible cells is outside [0, {cells}] for a mask of {tuple(mask.shape)}")
            self.keep = int(keep)
            counts = self.active.reshape(mask.shape[0], -1).sum(1)
            torch._assert_async((counts == self.keep).all(), f"a sample of the mask does not keep {keep} visible cells")
        self._cache = {}

    def clear(self) -> None:
        self.active = None
        self.keep = None
        self._cache = {}

    def get(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Float active mask broadcastable to ``x``: (B, 1, H, W), or (B, H, W, 1) if channels-last."""
        if self.active is None:
            raise RuntimeError("sparse layer called outside SparseEncoder.forward (no mask set)")
        hw = tuple(x.shape[1:3]) if channels_last else tuple(x.shape[-2:])
        key = (hw, x.dtype, x.device)
        m = self._cache.get(key)
        if m is None:
            m = upsample_mask(self.active, hw).to(device=x.device, dtype=x.dtype).unsqueeze(1)
            self._cache[key] = m
        return m.permute(0, 2, 3, 1) if channels_last else m


class SparseLayer:
    """Mixin placed before a converted module's original class. ``_vm_ctx`` (the encoder's
    :class:`MaskContext`) is set at conversion; ``_vm_dense_cls`` is the original class."""

    _vm_ctx: MaskContext
    _vm_dense_cls: type

    def _mask_out(self, y: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        return y * self._vm_ctx.get(y, channels_last)


def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean, var, n) -> None:
    """BatchNorm's running-statistics update from batch ``mean``/biased ``var`` over ``n`` positions."""
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * (n / (n - 1).clamp_min(1.0))
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
