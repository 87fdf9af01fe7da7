"""Sparse execution of dense ConvNets in pure PyTorch (submanifold-sparse semantics).

A dense timm model is converted in place by swapping each layer's class for a sparse subclass of
it: parameters, buffers and names are untouched, so ``to_dense()`` only swaps the classes back.
Every converted layer multiplies its output by the active (visible) mask at its resolution, so
masked positions hold exact zeros after every layer and never leak into visible ones; layers that
pool over positions (BatchNorm, max/avg pooling) only see visible positions. Masks must be
block-aligned on the grid of the model's total stride, which makes these the exact semantics of
submanifold sparse convolution (DESIGN.md §2).
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d
from timm.layers import activations as timm_act
from timm.layers.grn import GlobalResponseNorm
from timm.layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet

from videomac.masking import check_images, check_mask, upsample_mask
from videomac.models.videomac_resnet import BasicBlock, Bottleneck, VideoMACResNet

__all__ = ["SparseEncoder", "MaskContext", "register_sparse_container", "sparsify", "densify"]


class MaskContext:
    """The mask of the current forward pass, shared by all sparse layers of one encoder."""

    def __init__(self) -> None:
        self.active: Optional[torch.Tensor] = None  # (B, h, w) bool, True = visible
        self._cache: Dict[Tuple, torch.Tensor] = {}

    def set(self, mask: torch.Tensor) -> None:
        self.active = ~mask
        self._cache = {}

    def clear(self) -> None:
        self.active = None
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


class _Sparse:
    """Mixin placed before the original class; ``_vm_ctx`` is set at conversion."""

    _vm_ctx: MaskContext

    def _mask_out(self, y: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        return y * self._vm_ctx.get(y, channels_last)


class _SparseConv(_Sparse):
    def forward(self, x):
        return self._mask_out(super().forward(x))


class _SparseLastDim(_Sparse):
    """Layers acting on the last dim (Linear, LayerNorm): a 4-D input is (B, H, W, C)."""

    def forward(self, x):
        y = super().forward(x)
        return self._mask_out(y, channels_last=True) if y.ndim == 4 else y


class _SparseGRN(_Sparse):
    # Masked positions are exact zeros, so GRN's spatial L2 norm is already the norm over the
    # visible positions of each sample; only the bias written at masked positions must go.
    def forward(self, x):
        return self._mask_out(super().forward(x), channels_last=self.channel_dim == -1)


class _SparseBatchNorm(_Sparse):
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


def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean, var, n) -> None:
    """BatchNorm's running-statistics update from batch ``mean``/biased ``var`` over ``n`` positions."""
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * (n / (n - 1).clamp_min(1.0))
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


class _SparseMaxPool(_Sparse):
    def forward(self, x):
        m = self._vm_ctx.get(x)
        y = super().forward(x.masked_fill(m == 0, float("-inf")))
        return self._mask_out(torch.nan_to_num(y, neginf=0.0))


class _SparseAvgPool(_Sparse):
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

# Position-wise layers that map 0 to 0: they keep masked positions at zero unconverted.
_ZERO_PRESERVING = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Hardswish,
    nn.Mish,
    nn.Dropout,
    DropPath,
    timm_act.GELU,
    timm_act.GELUTanh,
    timm_act.Swish,
    timm_act.Mish,
    timm_act.QuickGELU,
    timm_act.HardSwish,
    timm_act.Tanh,
)

# Containers whose own forward only composes children with position-wise ops (permute, residual
# add, layer scale). Any other container could mix positions and is refused.
_CONTAINERS = {
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
    ConvNeXt,
    ConvNeXtStage,
    ConvNeXtBlock,
    Mlp,
    ConvMlp,
    GlobalResponseNormMlp,
    ResNet,
    TimmBasicBlock,
    TimmBottleneck,
    VideoMACResNet,
    BasicBlock,
    Bottleneck,
}

# Top-level children used only by forward_head, never by forward_features.
_HEAD_NAMES = {"head", "fc", "global_pool", "head_drop", "classifier", "pre_logits"}

_SPARSE_CLASSES: Dict[Type[nn.Module], Type[nn.Module]] = {}


def register_sparse_container(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Declare that ``cls.forward`` only composes its children with position-wise ops."""
    _CONTAINERS.add(cls)
    return cls


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
        if name in _HEAD_NAMES:
            continue
        yield name, child
        for sub_name, sub in child.named_modules():
            if sub_name:
                yield f"{name}.{sub_name}", sub


def sparsify(model: nn.Module, ctx: MaskContext) -> nn.Module:
    """Convert ``model``'s feature layers in place; raises on a layer it cannot run sparsely."""
    if type(model) not in _CONTAINERS:
        raise TypeError(f"cannot run {type(model).__name__} sparsely: unsupported model type")
    plan = []
    for name, module in _encoder_modules(model):
        cls = type(module)
        if isinstance(module, _Sparse):
            raise ValueError(f"module '{name}' is already sparse")
        sparse_cls = _sparse_class(cls)
        if sparse_cls is not None:
            plan.append((module, sparse_cls))
        elif not (isinstance(module, _ZERO_PRESERVING) or cls in _CONTAINERS):
            raise TypeError(
                f"cannot run module '{name}' ({cls.__module__}.{cls.__name__}) sparsely: unsupported "
                "layer type. Supported: Conv2d, LayerNorm, LayerNorm2d, Linear, GlobalResponseNorm, "
                "BatchNorm2d, MaxPool2d, AvgPool2d, zero-preserving activations and dropout; declare "
                "position-wise containers with videomac.register_sparse_container."
            )
    for module, sparse_cls in plan:
        module.__class__ = sparse_cls
        module._vm_ctx = ctx
    return model


def densify(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify` in place."""
    for module in model.modules():
        if isinstance(module, _Sparse):
            module.__class__ = module._vm_dense_cls
            del module._vm_ctx
    return model


class SparseEncoder(nn.Module):
    """Run a dense timm ConvNet sparsely: ``forward(x, mask)`` -> last feature map, masked cells 0.

    ``mask`` is bool ``(B, h, w)`` over the grid of the model's total stride (32), True = masked.
    ``backend``: ``'visible'`` (the default) runs pointwise layers on the visible positions only
    (:mod:`videomac.models.visible`; 1.9x-3.4x faster training than ``'masked'`` on CPU, see
    docs/performance.md); ``'masked'`` is the layer-by-layer reference (every layer a module call
    that runs dense and zeroes masked positions; same results); ``'minkowski'`` is refused
    (MinkowskiEngine is optional and no conversion to it is implemented).
    The wrapped model keeps its parameter names (under ``model.``); :meth:`to_dense` returns a
    plain dense copy whose state_dict loads strictly into ``timm.create_model(name)``.
    """

    BACKENDS = ("masked", "visible", "minkowski")

    def __init__(self, model: nn.Module, backend: str = "visible"):
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown sparse backend {backend!r}; available: {', '.join(self.BACKENDS)}")
        if backend == "minkowski":
            from videomac.models.visible import require_minkowski

            require_minkowski()
        self.backend = backend
        if not hasattr(model, "forward_features"):
            raise TypeError(f"{type(model).__name__} has no forward_features(); pass a timm classification model")
        info = getattr(model, "feature_info", None)
        if not info:
            raise TypeError(f"{type(model).__name__} has no feature_info; cannot tell its stride")
        self.patch_size = int(info[-1]["reduction"])
        self.num_features = int(model.num_features)
        self.in_chans = int(model.stem[0].in_channels if hasattr(model, "stem") else model.conv1.in_channels)
        self.ctx = MaskContext()
        self.model = sparsify(model, self.ctx)
        if backend == "visible":
            from videomac.models.visible import visibilize

            visibilize(self.model, self.ctx)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        grid = check_images(x, self.patch_size, self.in_chans)
        mask = check_mask(mask, x.shape[0], grid).to(x.device)
        self.ctx.set(mask)
        try:
            # Masked pixels must not reach the first layer: its kernel may span patch borders.
            x = x * self.ctx.get(x)
            return self.model.forward_features(x)
        finally:
            self.ctx.clear()

    def head_modules(self):
        """The model's children used only by forward_head (never run here)."""
        return [m for n, m in self.model.named_children() if n in _HEAD_NAMES]

    def to_dense(self) -> nn.Module:
        """A dense copy of the wrapped model with the same weights (the sparse encoder is unchanged)."""
        return densify(copy.deepcopy(self.model))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, num_features={self.num_features}, backend={self.backend!r}"
