"""``SparseEncoder``: run a dense timm ConvNet sparsely on masked images, and get it back dense."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from videomac.masking import check_images, check_mask
from videomac.models import timm_blocks  # noqa: F401  (declares timm's ConvNeXt and ResNet families)
from videomac.sparse import BACKENDS, resolve_backend
from videomac.sparse.context import MaskContext
from videomac.sparse.masked import HEAD_NAMES, densify, sparsify
from videomac.sparse.visible import visibilize

__all__ = ["SparseEncoder"]


class SparseEncoder(nn.Module):
    """Run a dense timm ConvNet sparsely: ``forward(x, mask)`` -> last feature map, masked cells 0.

    ``mask`` is bool ``(B, h, w)`` over the grid of the model's total stride (32; 16 for the isotropic
    ConvNeXt), True = masked. ``backend``: ``'visible'`` runs every layer, spatial convs included, on
    the visible positions only (:mod:`videomac.sparse.visible`, :mod:`videomac.sparse.packed`; 3.8-5.3x
    faster train steps than ``'masked'`` on CPU, see docs/performance.md); ``'masked'`` is the
    layer-by-layer reference (every layer a module call that runs dense and zeroes masked positions;
    same results); ``'auto'`` (the default) picks, at each forward, the one measured fastest on the
    input's device (:data:`videomac.sparse.AUTO_BACKEND`: visible on CPU, masked on CUDA).
    ``model`` itself stays the dense model it was: the encoder runs a structural copy of it
    (:func:`~videomac.sparse.masked.share_structure`) holding the same Parameter and buffer tensors,
    so training the encoder trains ``model``. The copy keeps the parameter names (under ``model.``);
    :meth:`to_dense` returns an independent dense copy whose state_dict loads strictly into
    ``timm.create_model(name)``.
    """

    BACKENDS = BACKENDS

    def __init__(self, model: nn.Module, backend: str = "auto"):
        super().__init__()
        resolve_backend(backend, "cpu")  # checks the name
        self.backend = backend
        if not hasattr(model, "forward_features"):
            raise TypeError(f"{type(model).__name__} has no forward_features(); pass a timm classification model")
        info = getattr(model, "feature_info", None)
        if not info:
            raise TypeError(f"{type(model).__name__} has no feature_info; cannot tell its stride")
        self.patch_size = int(info[-1]["reduction"])
        self.num_features = int(model.num_features)
        self.ctx = MaskContext()
        self.model = sparsify(model, self.ctx)
        first_conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None:
            raise TypeError(f"{type(model).__name__} has no Conv2d; cannot tell its input channels")
        self.in_chans = int(first_conv.in_channels)
        if backend != "masked":
            visibilize(self.model, self.ctx)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: Optional[int] = None) -> torch.Tensor:
        """``keep``: the visible cells of every sample, when known (``random_mask`` keeps
        ``num_visible(L, ratio)``): the packed sizes then follow from shapes, with no host sync, as
        ``torch.compile(fullgraph=True)`` and CUDA graphs need. Without it the ``visible`` backend reads
        the counts once, and pads samples with fewer visible cells (exact either way)."""
        grid = check_images(x, self.patch_size, self.in_chans)
        mask = check_mask(mask, x.shape[0], grid).to(x.device)
        self.ctx.set(mask, keep)
        self.ctx.packed = resolve_backend(self.backend, x.device) == "visible"
        try:
            # Masked pixels must not reach the first layer: its kernel may span patch borders.
            x = x * self.ctx.get(x)
            return self.model.forward_features(x)
        finally:
            self.ctx.clear()

    def head_modules(self):
        """The model's children used only by forward_head (never run here)."""
        return [m for n, m in self.model.named_children() if n in HEAD_NAMES]

    def to_dense(self) -> nn.Module:
        """A dense copy of the wrapped model with the same weights (the sparse encoder is unchanged)."""
        return densify(copy.deepcopy(self.model))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, num_features={self.num_features}, backend={self.backend!r}"
