"""Sparse execution of dense ConvNets in pure PyTorch (submanifold-sparse semantics): the ``masked``
backend, and the conversion both backends start from.

:func:`sparsify` converts a structural copy of a dense timm model (:func:`share_structure`: new module
objects holding the model's own Parameter and buffer tensors), swapping each layer's class for a sparse
subclass of it. The model passed in stays the dense model it was and shares its weights with the
copy; names are untouched, so :func:`densify` only swaps the classes back.
Every converted layer multiplies its output by the active (visible) mask at its resolution, so
masked positions hold exact zeros after every layer and never leak into visible ones; layers that
pool over positions (BatchNorm, max/avg pooling) only see visible positions. Masks must be
block-aligned on the grid of the model's total stride, which makes these the exact semantics of
submanifold sparse convolution (docs/design.md §2). Which containers may be converted is declared by
each model family (:mod:`.blocks`).
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Type

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.layers.grn import GlobalResponseNorm

from videomac.sparse.blocks import ZERO_PRESERVING, is_container
from videomac.sparse.context import MaskContext, SparseLayer, update_running_stats

__all__ = ["HEAD_NAMES", "share_structure", "sparsify", "densify"]


class _SparseConv(SparseLayer):
    def forward(self, x):
        return self._mask_out(super().forward(x))


class _SparseLastDim(SparseLayer):
    """Layers acting on the last dim (Linear, LayerNorm): a 4-D input is (B, H, W, C)."""

    def forward(self, x):
        y = super().forward(x)
        return self._mask_out(y, channels_last=True) if y.ndim == 4 else y


class _SparseGRN(SparseLayer):
    # Masked positions are exact zeros, so GRN's spatial L2 norm is already the norm over the
    # visible positions of each sample; only the bias written at masked positions must go.
    def forward(self, x):
        return self._mask_out(super().forward(x), channels_last=self.channel_dim == -1)


class _SparseBatchNorm(SparseLayer):
    """BatchNorm whose batch statistics come from visible positions only."""

    def forward(self, x):
        m = self._vm_ctx.get(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return self._mask_out(super().forward(x))
        n = (m.sum() * 1.0).clamp_min(1.0)
        mean = (x * m).sum(dim=(0, 2, 3)) / n
        var = (((x - mean.view(1, -1, 1, 1)) * m) ** 2).sum(dim=(0, 2, 3)) / n
        update_running_stats(self, mean, var, n)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y * m


class _SparseMaxPool(SparseLayer):
    def forward(self, x):
        m = self._vm_ctx.get(x)
        y = super().forward(x.masked_fill(m == 0, float("-inf")))
        return self._mask_out(torch.nan_to_num(y, neginf=0.0))


class _SparseAvgPool(SparseLayer):
    # Rescale so that masked zeros do not dilute the average; with nothing masked the factor is 1,
    # so padding conventions (count_include_pad) stay the dense layer's.
    def forward(self, x):
        m = self._vm_ctx.get(x)
        y = super().forward(x)
        frac = super().forward(m) / super().forward(torch.ones_like(m))
        return self._mask_out(torch.where(frac > 0, y / frac.clamp_min(1e-12), torch.zeros_like(y)))


# Convertible layer types -> sparse mixin. Order matters: the first isinstance match wins.
_CONVERTIBLE = [
    (nn.Conv2d, _SparseConv),
    (LayerNorm2d, _SparseConv),
    (nn.LayerNorm, _SparseLastDim),
    (nn.Linear, _SparseLastDim),
    (GlobalResponseNorm, _SparseGRN),
    (nn.BatchNorm2d, _SparseBatchNorm),
    (nn.MaxPool2d, _SparseMaxPool),
    (nn.AvgPool2d, _SparseAvgPool),
]

# Top-level children used only by forward_head, never by forward_features.
HEAD_NAMES = {"head", "fc", "global_pool", "head_drop", "classifier", "pre_logits"}

_SPARSE_CLASSES: Dict[Type[nn.Module], Type[nn.Module]] = {}


def _sparse_class(orig: Type[nn.Module]) -> Optional[Type[nn.Module]]:
    if orig in _SPARSE_CLASSES:
        return _SPARSE_CLASSES[orig]
    for base, mixin in _CONVERTIBLE:
        if issubclass(orig, base):
            cls = type(f"Sparse{orig.__name__}", (mixin, orig), {"_vm_dense_cls": orig})
            _SPARSE_CLASSES[orig] = cls
            return cls
    return None


def _encoder_modules(model: nn.Module):
    for name, child in model.named_children():
        if name in HEAD_NAMES:
            continue
        yield name, child
        for sub_name, sub in child.named_modules():
            if sub_name:
                yield f"{name}.{sub_name}", sub


def share_structure(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its weights: every module is a new object (so its
    class can be swapped without touching ``model``) whose ``_parameters`` and ``_buffers`` dicts are
    ``model``'s own. Parameters, buffers, in-place updates (optimizer steps, BatchNorm statistics) and
    reassignments (``.to()``, ``load_state_dict(assign=True)``) are seen by both; training mode, hooks
    registered later and other attributes are each module's own. A module reached twice is copied once."""
    memo: Dict[int, nn.Module] = {}

    def clone(m: nn.Module) -> nn.Module:
        c = memo.get(id(m))
        if c is None:
            c = memo[id(m)] = copy.copy(m)  # a shallow copy: the same dicts until replaced below
            for key, value in vars(m).items():
                if "hooks" in key and isinstance(value, dict):
                    setattr(c, key, type(value)(value))  # hooks registered on one do not reach the other
            c._modules = {k: None if s is None else clone(s) for k, s in m._modules.items()}
        return c

    return clone(model)


def sparsify(model: nn.Module, ctx: MaskContext) -> nn.Module:
    """The sparse form of ``model`` (a :func:`share_structure` copy with its feature layers converted;
    ``model`` itself is unchanged); raises on a layer it cannot run sparsely."""
    if not is_container(type(model)):
        raise TypeError(f"cannot run {type(model).__name__} sparsely: unsupported model type")
    plan = []
    for name, module in _encoder_modules(model):
        cls = type(module)
        if isinstance(module, SparseLayer):
            raise ValueError(f"module '{name}' is already sparse")
        sparse_cls = _sparse_class(cls)
        if sparse_cls is not None:
            plan.append((module, sparse_cls))
        elif not (isinstance(module, ZERO_PRESERVING) or is_container(cls)):
            raise TypeError(
                f"cannot run module '{name}' ({cls.__module__}.{cls.__name__}) sparsely: unsupported "
                "layer type. Supported: Conv2d, LayerNorm, LayerNorm2d, Linear, GlobalResponseNorm, "
                "BatchNorm2d, MaxPool2d, AvgPool2d, zero-preserving activations and dropout; declare "
                "position-wise containers with videomac.register_sparse_container."
            )
    sparse = share_structure(model)
    copies = dict(zip(map(id, model.modules()), sparse.modules()))
    for module, sparse_cls in plan:
        module = copies[id(module)]
        module.__class__ = sparse_cls
        module._vm_ctx = ctx
    return sparse


def densify(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify` in place."""
    for module in model.modules():
        if isinstance(module, SparseLayer):
            module.__class__ = module._vm_dense_cls
            del module._vm_ctx
    return model
