"""Visible-only execution of sparse ConvNets (the ``'visible'`` backend of :class:`SparseEncoder`).

On top of the masked conversion of :mod:`videomac.models.sparse`, the residual blocks each family
declares (:func:`videomac.models.blocks.register_block`) and the ``nn.Sequential`` holding them get
visible classes (names and parameters untouched). Inside a run of blocks the activations stay *packed*: a ``(N, C)``
tensor of the N visible positions of the batch (row-major over ``(b, h, w)``). Pointwise layers
(Linear, 1x1 conv, LayerNorm, BatchNorm, GRN, activations) run on the packed tokens only; spatial
convs (depthwise 7x7, 3x3, strided) scatter to a dense zero-filled map, run dense and gather
again. The residual stream stays packed, so a ConvNeXt block costs one scatter before ``conv_dw``
and one gather after it. Results equal the masked backend's (same math on the same positions).

Dense maps made here are channels-last (B, H, W, C in memory): gathers/scatters are then row
copies, and PyTorch's CPU depthwise conv is several times faster in that layout.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers.grn import GlobalResponseNorm

from videomac.masking import upsample_mask
from videomac.models.blocks import ZERO_PRESERVING, block_parts, dense_class
from videomac.models.context import MaskContext, SparseLayer, update_running_stats

__all__ = ["visibilize", "gather", "scatter"]


# ----------------------------------------------------------------------------------------------
# Packed layout helpers (indices cached per resolution in the encoder's MaskContext).


def _index(ctx: MaskContext, hw: Tuple[int, int], device) -> Dict[str, object]:
    """Flat indices of the visible positions at ``hw`` and the sample of each packed token."""
    key = ("visible", hw, device)
    info = ctx._cache.get(key)
    if info is None:
        if ctx.active is None:
            raise RuntimeError("visible layer called outside SparseEncoder.forward (no mask set)")
        B = ctx.active.shape[0]
        vis = upsample_mask(ctx.active.to(device), hw).reshape(B, -1)
        idx = vis.reshape(-1).nonzero().squeeze(1)
        counts = vis.sum(1)
        # With equal counts per sample (random_mask's), per-sample sums are a plain reshape.
        per_sample = int(counts[0]) if B and bool((counts == counts[0]).all()) else None
        info = dict(idx=idx, sample=idx // (hw[0] * hw[1]), B=B, per_sample=per_sample)
        ctx._cache[key] = info
    return info


def _sub_index(ctx: MaskContext, hw: Tuple[int, int], stride: int, device) -> torch.Tensor:
    """Rows of the packed tokens at ``hw`` that a stride-``stride`` 1x1 conv reads."""
    key = ("sub", hw, stride, device)
    sub = ctx._cache.get(key)
    if sub is None:
        src = _index(ctx, hw, device)
        B = src["B"]
        out_hw = ((hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1)
        dst = _index(ctx, out_hw, device)
        rows = torch.full((B * hw[0] * hw[1],), -1, dtype=torch.long, device=device)
        rows[src["idx"]] = torch.arange(src["idx"].numel(), device=device)
        rows = rows.view(B, hw[0], hw[1])[:, ::stride, ::stride].reshape(-1)
        sub = rows[dst["idx"]]
        ctx._cache[key] = sub
    return sub


def gather(ctx: MaskContext, x: torch.Tensor) -> torch.Tensor:
    """Dense ``(B, C, H, W)`` -> packed ``(N, C)`` visible tokens."""
    B, C, H, W = x.shape
    idx = _index(ctx, (H, W), x.device)["idx"]
    return x.permute(0, 2, 3, 1).reshape(B * H * W, C).index_select(0, idx)


def scatter(ctx: MaskContext, t: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Packed ``(N, C)`` -> dense ``(B, C, H, W)`` (channels-last memory), masked positions 0."""
    info = _index(ctx, hw, t.device)
    B, C = info["B"], t.shape[1]
    out = t.new_zeros(B * hw[0] * hw[1], C).index_copy(0, info["idx"], t)
    return out.view(B, hw[0], hw[1], C).permute(0, 3, 1, 2)


class _State:
    """Activations between layers: packed ``(N, C)`` at ``hw``, or dense (``masked``: zeros hold)."""

    __slots__ = ("t", "hw", "packed", "masked", "_packed")

    def __init__(self, t: torch.Tensor, hw: Tuple[int, int], packed: bool, masked: bool = True):
        self.t, self.hw, self.packed, self.masked = t, hw, packed, masked
        self._packed: Optional[_State] = None

    @classmethod
    def dense(cls, x: torch.Tensor, masked: bool = True) -> _State:
        return cls(x, tuple(x.shape[-2:]), False, masked)

    def to_packed(self, ctx: MaskContext) -> _State:
        # A gather reads visible positions only, so an unmasked dense map needs no mask first. Cached:
        # a block's main path and shortcut may both start from the same dense input.
        if self.packed:
            return self
        if self._packed is None:
            self._packed = _State(gather(ctx, self.t), self.hw, True)
        return self._packed

    def to_dense(self, ctx: MaskContext) -> torch.Tensor:
        if self.packed:
            return scatter(ctx, self.t, self.hw)
        return self.t if self.masked else self.t * ctx.get(self.t)


# ----------------------------------------------------------------------------------------------
# Pointwise layers on packed tokens.


def _segment_sum(x: torch.Tensor, info: Dict[str, object]) -> torch.Tensor:
    """Per-sample sums over packed tokens: ``(N, C)`` -> ``(B, C)``."""
    k = info["per_sample"]
    if k is not None:
        return x.view(info["B"], k, x.shape[1]).sum(1)
    return x.new_zeros(info["B"], x.shape[1]).index_add(0, info["sample"], x)


def _per_token(v: torch.Tensor, t: torch.Tensor, info: Dict[str, object]) -> torch.Tensor:
    """Broadcast per-sample rows ``(B, C')`` to the packed tokens ``(N, C')``."""
    k = info["per_sample"]
    if k is not None:
        return v.unsqueeze(1).expand(-1, k, -1).reshape(-1, v.shape[1])
    return v.index_select(0, info["sample"])


def _grn(m: GlobalResponseNorm, t: torch.Tensor, info: Dict[str, object]) -> torch.Tensor:
    # GRN's spatial L2 norm is per sample over its visible positions (the masked ones are zeros in
    # the dense form); computed in fp32, with a zero gradient where the norm is 0 (as torch.norm).
    ss = _segment_sum(t.float().square(), info)
    pos = ss > 0
    gx = torch.where(pos, torch.where(pos, ss, torch.ones_like(ss)).sqrt(), torch.zeros_like(ss))
    nx = _per_token((gx / (gx.mean(dim=-1, keepdim=True) + m.eps)).to(t.dtype), t, info)
    return t + torch.addcmul(m.bias, m.weight, t * nx)


def _batch_norm(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    # The masked backend's BatchNorm statistics: over the visible positions, n clamped to >= 1.
    if not (m.training or m.running_mean is None):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    n = t.new_tensor(float(max(t.shape[0], 1)))
    mean = t.sum(0) / n
    var = (t - mean).square().sum(0) / n
    update_running_stats(m, mean, var, n)
    y = (t - mean) * torch.rsqrt(var + m.eps)
    return y * m.weight + m.bias if m.affine else y


_LAYER_NORMS = (nn.LayerNorm, LayerNorm2d, TimmLayerNorm)


def _kind(m: nn.Module) -> Optional[str]:
    """How ``m`` runs on packed tokens, or None if it is not pointwise (it then runs dense)."""
    cls = dense_class(m)
    if cls is nn.Linear:
        return "linear"
    if cls is nn.Conv2d and m.kernel_size == (1, 1) and m.padding == (0, 0) and m.groups == 1:
        return "conv1x1" if m.stride[0] == m.stride[1] else None
    if cls in _LAYER_NORMS:
        return "layer_norm"
    if cls is nn.BatchNorm2d:
        return "batch_norm"
    if cls is GlobalResponseNorm:
        return "grn"
    if isinstance(m, DropPath):
        return "drop_path"
    if isinstance(m, ZERO_PRESERVING):
        return "elementwise"
    return None


def _pointwise(m: nn.Module, kind: str, st: _State, ctx: MaskContext) -> _State:
    """Run the pointwise layer ``m`` on the packed tokens of ``st``."""
    st = st.to_packed(ctx)
    t, hw = st.t, st.hw
    if kind == "linear":
        t = F.linear(t, m.weight, m.bias)
    elif kind == "conv1x1":
        s = m.stride[0]
        if s != 1:  # a strided 1x1 conv reads a subset of the visible tokens
            t = t.index_select(0, _sub_index(ctx, hw, s, t.device))
            hw = ((hw[0] - 1) // s + 1, (hw[1] - 1) // s + 1)
        t = F.linear(t, m.weight.flatten(1), m.bias)
    elif kind == "layer_norm":
        t = F.layer_norm(t, m.normalized_shape, m.weight, m.bias, m.eps)
    elif kind == "batch_norm":
        t = _batch_norm(m, t)
    elif kind == "grn":
        t = _grn(m, t, _index(ctx, hw, t.device))
    elif kind == "drop_path":
        if m.training and m.drop_prob > 0.0:
            # Per-sample factors drawn exactly as DropPath draws them for the dense map (same RNG use).
            info = _index(ctx, hw, t.device)
            t = t * _per_token(m(t.new_ones(info["B"], 1)), t, info)
    else:
        t = m(t)  # elementwise; dropout draws its own mask on the packed tokens
    return _State(t, hw, True)


def _run(ops: List[Optional[nn.Module]], st: _State, ctx: MaskContext) -> _State:
    """Apply ``ops`` in order: pointwise ones on packed tokens, anything else dense with mask semantics."""
    for m in ops:
        if m is None or type(m) is nn.Identity:
            continue
        kind = _kind(m)
        if kind is not None:
            st = _pointwise(m, kind, st, ctx)
        elif dense_class(m) is nn.Conv2d:
            # Visible outputs of a conv only read zeros at masked inputs; its output mask is left to
            # the next gather (or to_dense).
            st = _State.dense(nn.Conv2d.forward(m, st.to_dense(ctx)), masked=False)
        else:
            st = _State.dense(m(st.to_dense(ctx)))
    return st


# ----------------------------------------------------------------------------------------------
# Blocks (declared by each family with videomac.models.blocks.register_block) on packed tokens.


class _VisibleBlock(SparseLayer):
    """A residual block run on packed visible tokens; ``forward`` keeps the dense interface."""

    def forward_packed(self, st: _State) -> _State:
        ctx = self._vm_ctx
        main, gamma, drop_path, shortcut, post = block_parts(self)
        y = _run(main, st, ctx).to_packed(ctx)
        if gamma is not None:
            y = _State(y.t * gamma, y.hw, True)
        y = _run([drop_path], y, ctx)
        sc = _run(shortcut, st, ctx).to_packed(ctx)
        return _run(post, _State(y.t + sc.t, y.hw, True), ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_packed(_State.dense(x)).to_dense(self._vm_ctx)


class _VisibleSequential(SparseLayer):
    """``nn.Sequential`` of blocks that hands packed tokens from one block to the next."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self._vm_ctx
        st = _State.dense(x)
        for m in self:
            st = m.forward_packed(st) if isinstance(m, _VisibleBlock) else _run([m], st, ctx)
        return st.to_dense(ctx)


_VISIBLE_CLASSES: Dict[Type[nn.Module], Type[nn.Module]] = {}


def _visible_class(orig: Type[nn.Module], mixin: Type) -> Type[nn.Module]:
    cls = _VISIBLE_CLASSES.get(orig)
    if cls is None:
        cls = type(f"Visible{orig.__name__}", (mixin, orig), {"_vm_dense_cls": orig})
        _VISIBLE_CLASSES[orig] = cls
    return cls


def visibilize(model: nn.Module, ctx: MaskContext) -> nn.Module:
    """Give the supported blocks of a :func:`sparsify`-converted model (and their Sequentials) the
    visible classes, in place; other layers keep the masked semantics. ``densify`` undoes both."""
    blocks = []
    for m in model.modules():
        if block_parts(m) is not None:
            blocks.append(m)
    for m in blocks:
        m.__class__ = _visible_class(type(m), _VisibleBlock)
        m._vm_ctx = ctx
    for m in list(model.modules()):
        if type(m) is nn.Sequential and any(isinstance(c, _VisibleBlock) for c in m):
            m.__class__ = _visible_class(nn.Sequential, _VisibleSequential)
            m._vm_ctx = ctx
    return model
