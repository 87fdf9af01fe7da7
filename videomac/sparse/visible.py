"""Visible-only execution of sparse ConvNets (the ``'visible'`` backend of :class:`SparseEncoder`).

On top of the masked conversion of :mod:`videomac.sparse.masked`, the residual blocks each family
declares (:func:`videomac.sparse.blocks.register_block`), every ``nn.Sequential`` and the layers a
family's own ``forward`` calls directly (stem convs, stage norms, BatchNorm, max-pool, activations)
get visible classes (names and parameters untouched). Activations are *packed*: a ``(N, C)`` tensor
of the N visible positions of the batch, block-major (:mod:`.packed`). Every layer does
visible-only work:

- pointwise layers (Linear, 1x1 conv, LayerNorm, BatchNorm, GRN, activations) run on the packed tokens;
- spatial convs and max-pooling compute only the visible outputs (:mod:`.packed`: patchify for
  kernel == stride, tiles with a halo or im2col over packed neighbourhoods otherwise);
- the model's ``forward_features`` and the registered containers (timm's ``ConvNeXtStage``, ...) whose
  forward only applies submodules one after the other (checked by tracing it with ``torch.fx``, module
  calls as leaves) run that chain on packed tokens: from the stem to the last stage there is no dense
  map at all, and the encoder's output is the one scatter;
- elsewhere (a forward that does more than chain modules, a module with hooks, grad checkpointing),
  modules hand packed tokens over with the dense tensor they return: a module publishes its output
  as a zero-filled dense map *and* remembers the packed tokens for it; the next visible module
  receiving that very tensor (same object, unmodified) takes the packed tokens. Any other code
  receiving the map gets the exact dense result.

Results equal the masked backend's (same math on the same positions; tests/test_sparse_visible.py). Layers
the packed path cannot run (unusual geometries, unknown layer types) fall back to the masked
backend's dense layer on a scattered map, exactly.
"""

from __future__ import annotations

import weakref
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers.grn import GlobalResponseNorm

from videomac.sparse import packed
from videomac.sparse.blocks import ZERO_PRESERVING, block_parts, dense_class, is_container
from videomac.sparse.context import MaskContext, SparseLayer, update_running_stats
from videomac.sparse.masked import HEAD_NAMES
from videomac.sparse.packed import Layout, layout

__all__ = ["visibilize", "gather", "scatter"]


def _index(ctx: MaskContext, hw, device) -> Layout:
    """The packed layout of resolution ``hw`` (cached per forward pass)."""
    return layout(ctx, hw, device)


def gather(ctx: MaskContext, x: torch.Tensor) -> torch.Tensor:
    """Dense ``(B, C, H, W)`` -> packed ``(N, C)`` visible tokens (reads the visible blocks only)."""
    B, C, H, W = x.shape
    lay = layout(ctx, (H, W), x.device)
    (gh, gw), (bh, bw) = lay.grid, lay.block
    blocks = x.reshape(B, C, gh, bh, gw, bw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, bh, bw, C)
    b, gy, gx = lay.blocks // (gh * gw), lay.blocks // gw % gh, lay.blocks % gw
    return blocks[b, gy, gx].reshape(-1, C)


def scatter(ctx: MaskContext, t: torch.Tensor, hw) -> torch.Tensor:
    """Packed ``(N, C)`` -> dense ``(B, C, H, W)`` (channels-last memory), masked positions 0."""
    lay = layout(ctx, hw, t.device)
    C = t.shape[1]
    out = t.new_zeros(lay.B * hw[0] * hw[1], C).index_copy(0, lay.idx, _valid_only(t, lay))
    return out.view(lay.B, hw[0], hw[1], C).permute(0, 3, 1, 2)


class _State:
    """Activations between layers: packed ``(N, C)`` at ``hw``, or dense (``masked``: zeros hold)."""

    __slots__ = ("t", "hw", "packed", "masked", "_packed")

    def __init__(self, t: torch.Tensor, hw, packed: bool, masked: bool = True):
        self.t, self.hw, self.packed, self.masked = t, (int(hw[0]), int(hw[1])), packed, masked
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
# Hand-over of packed tokens between modules called by a family's own forward.


def _version(x: torch.Tensor) -> int:
    return 0 if x.is_inference() else x._version


def _publish(ctx: MaskContext, st: _State) -> torch.Tensor:
    """The dense output of a visible module; its packed tokens are kept for the next visible module."""
    # Compiled, the hand-over (object identity, weak references) is not traceable; the dense map is exact.
    if not st.packed or torch.compiler.is_compiling():
        return st.to_dense(ctx)
    d = scatter(ctx, st.t, st.hw)
    key, cache = ("handoff", id(d)), ctx._cache
    cache[key] = (weakref.ref(d, lambda _r, k=key, c=cache: c.pop(k, None)), _version(d), st)
    return d


def _received(ctx: MaskContext, x: torch.Tensor) -> _State:
    """The state of a module input: the packed tokens published with ``x``, or ``x`` itself (dense)."""
    if torch.compiler.is_compiling():
        return _State.dense(x)
    entry = ctx._cache.get(("handoff", id(x)))
    if entry is not None and entry[0]() is x and entry[1] == _version(x):
        return entry[2]
    return _State.dense(x)


# ----------------------------------------------------------------------------------------------
# Pointwise layers on packed tokens.


def _valid_only(t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """``t`` with its padding rows zeroed (a select, not a product: padding rows hold any value)."""
    return t if lay.valid is None else torch.where(lay.valid, t, torch.zeros((), dtype=t.dtype, device=t.device))


def _segment_sum(x: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Per-sample sums over the (valid) packed tokens: ``(N, C)`` -> ``(B, C)``."""
    return _valid_only(x, lay).view(lay.B, lay.per_sample, x.shape[1]).sum(1)


def _per_token(v: torch.Tensor, t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Broadcast per-sample rows ``(B, C')`` to the packed tokens ``(N, C')``."""
    return v.unsqueeze(1).expand(-1, lay.per_sample, -1).reshape(-1, v.shape[1])


def _grn(m: GlobalResponseNorm, t: torch.Tensor, lay: Layout) -> torch.Tensor:
    # GRN's spatial L2 norm is per sample over its visible positions (the masked ones are zeros in
    # the dense form); computed in at least fp32, with a zero gradient where the norm is 0 (as torch.norm).
    # x + bias + weight * (x * nx) = x * (1 + weight * nx) + bias: one pass over the tokens.
    ss = _segment_sum(t.to(torch.promote_types(t.dtype, torch.float32)).square(), lay)
    pos = ss > 0
    gx = torch.where(pos, torch.where(pos, ss, torch.ones_like(ss)).sqrt(), torch.zeros_like(ss))
    nx = (gx / (gx.mean(dim=-1, keepdim=True) + m.eps)).to(t.dtype)
    scale = torch.addcmul(torch.ones_like(m.weight), m.weight, nx)  # (B, C)
    k = lay.per_sample
    return torch.addcmul(m.bias, t.view(lay.B, k, t.shape[1]), scale.unsqueeze(1)).view(-1, t.shape[1])


def _batch_norm(m: nn.BatchNorm2d, t: torch.Tensor, lay: Layout) -> torch.Tensor:
    # The masked backend's BatchNorm statistics: over the visible positions, n clamped to >= 1.
    if not (m.training or m.running_mean is None):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    if lay.valid is None:
        n = t.new_tensor(float(max(t.shape[0], 1)))
    else:
        n = lay.valid.sum().to(t.dtype).clamp_min(1.0)
    mean = _valid_only(t, lay).sum(0) / n
    var = _valid_only(t - mean, lay).square().sum(0) / n
    update_running_stats(m, mean, var, n)
    y = (t - mean) * torch.rsqrt(var + m.eps)
    return y * m.weight + m.bias if m.affine else y


def _linear(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return F.linear(t, m.weight, m.bias)


def _conv1x1(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return F.linear(t, m.weight.flatten(1), m.bias)


def _layer_norm(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return F.layer_norm(t, m.normalized_shape, m.weight, m.bias, m.eps)


def _packed_batch_norm(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return _batch_norm(m, t, layout(ctx, hw, t.device))


def _packed_grn(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return _grn(m, t, layout(ctx, hw, t.device))


def _drop_path(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    if not (m.training and m.drop_prob > 0.0):
        return t
    # Per-sample factors drawn exactly as DropPath draws them for the dense map (same RNG use).
    lay = layout(ctx, hw, t.device)
    return t * _per_token(dense_class(m).forward(m, t.new_ones(lay.B, 1)), t, lay)


def _elementwise(m: nn.Module, t: torch.Tensor, ctx: MaskContext, hw) -> torch.Tensor:
    return dense_class(m).forward(m, t)  # dropout draws its own mask on the packed tokens


PointwiseOp = Callable[[nn.Module, torch.Tensor, MaskContext, Tuple[int, int]], torch.Tensor]

# Pointwise layers, by dense class (exact: a subclass may compute something else) -> how each runs on
# packed ``(N, C)`` tokens. Conv2d only when 1x1 (see _pointwise_op).
_POINTWISE: Dict[Type[nn.Module], PointwiseOp] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv1x1,
    nn.LayerNorm: _layer_norm,
    LayerNorm2d: _layer_norm,
    TimmLayerNorm: _layer_norm,
    nn.BatchNorm2d: _packed_batch_norm,
    GlobalResponseNorm: _packed_grn,
}
# ... and by base class (first match wins), for layers identified by what they are rather than their class.
_POINTWISE_BASES: Tuple[Tuple[Tuple[type, ...], PointwiseOp], ...] = (
    ((DropPath,), _drop_path),
    (ZERO_PRESERVING, _elementwise),
)

# Spatial layers with a packed implementation (None from it: fall back, see _run).
_SPATIAL = {nn.Conv2d: packed.conv2d, nn.MaxPool2d: packed.max_pool2d}


def _is_1x1(m: nn.Conv2d) -> bool:
    return m.kernel_size == (1, 1) and m.padding == (0, 0) and m.groups == 1 and m.stride == (1, 1)


def _pointwise_op(m: nn.Module) -> Optional[PointwiseOp]:
    """How ``m`` runs on packed tokens if it is pointwise, else None (see :func:`_run`)."""
    cls = dense_class(m)
    op = _POINTWISE.get(cls)
    if op is not None:
        return op if cls is not nn.Conv2d or _is_1x1(m) else None
    for bases, op in _POINTWISE_BASES:
        if isinstance(m, bases):
            return op
    return None


def _masked_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m`` as the masked backend runs it (dense, masked positions zeroed)."""
    if isinstance(m, _VisibleLayer):
        return super(_Visible, m).forward(x)
    return m(x)


def _run(ops: List[Optional[nn.Module]], st: _State, ctx: MaskContext) -> _State:
    """Apply ``ops`` in order on packed tokens; what cannot run packed runs dense with mask semantics."""
    for m in ops:
        if m is None or type(m) is nn.Identity:
            continue
        op = _pointwise_op(m)
        if op is not None:
            p = st.to_packed(ctx)
            st = _State(op(m, p.t, ctx, p.hw), p.hw, True)
            continue
        cls = dense_class(m)
        spatial = _SPATIAL.get(cls)
        res = None
        if spatial is not None:
            p = st.to_packed(ctx)
            res = spatial(ctx, m, p.t, p.hw)
        if res is not None:
            st = _State(res[0], res[1], True)
        elif cls is nn.Conv2d:
            # Visible outputs of a conv only read zeros at masked inputs; its output mask is left to
            # the next gather (or to_dense).
            st = _State.dense(nn.Conv2d.forward(m, st.to_dense(ctx)), masked=False)
        else:
            st = _State.dense(_masked_forward(m, st.to_dense(ctx)))
    return st


# ----------------------------------------------------------------------------------------------
# Visible modules: blocks, Sequentials and directly called layers.


class _Visible(SparseLayer):
    """A module that runs on packed tokens (``forward_packed``); ``forward`` keeps the dense interface."""

    def forward_packed(self, st: _State) -> _State:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._vm_ctx.packed:  # backend 'auto' resolved to 'masked' for this device
            return super().forward(x)
        return _publish(self._vm_ctx, self.forward_packed(_received(self._vm_ctx, x)))


class _VisibleBlock(_Visible):
    """A registered residual block."""

    def forward_packed(self, st: _State) -> _State:
        ctx = self._vm_ctx
        main, gamma, drop_path, shortcut, post = block_parts(self)
        y = _run(main, st, ctx).to_packed(ctx)
        if gamma is not None:
            y = _State(y.t * gamma, y.hw, True)
        y = _run([drop_path], y, ctx)
        sc = _run(shortcut, st, ctx).to_packed(ctx)
        return _run(post, _State(y.t + sc.t, y.hw, True), ctx)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or nn.modules.module._global_forward_hooks) or bool(
        nn.modules.module._global_forward_pre_hooks
    )


class _VisibleSequential(_Visible):
    """``nn.Sequential`` that hands packed tokens from one child to the next."""

    def forward_packed(self, st: _State) -> _State:
        return _run_chain(self._vm_ctx, self, st)


class _VisibleLayer(_Visible):
    """A layer called by a family's own forward (stem conv, stage norm, BatchNorm, pooling, activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return _masked_forward(self, x)
        return super().forward(x)

    def forward_packed(self, st: _State) -> _State:
        return _run([self], st, self._vm_ctx)


def _run_chain(ctx: MaskContext, modules: Iterable[nn.Module], st: _State) -> _State:
    """Apply ``modules`` one after the other, packed where they can run packed."""
    for m in modules:
        if type(m) is nn.Identity and not _has_hooks(m):
            continue  # it returns its input
        if isinstance(m, _Visible) and not _has_hooks(m):
            st = m.forward_packed(st)
        else:  # a module call (an unknown container, or hooks to run): hand over through its output
            st = _received(ctx, m(_publish(ctx, st)))
    return st


def _chain(module: nn.Module) -> List[nn.Module]:
    """The submodules a traced chain applies (``_vm_chain``: their names), in order."""
    return [module.get_submodule(name) for name in module._vm_chain]


class _VisibleChain(_Visible):
    """A registered container whose ``forward`` only applies submodules one after the other (traced)."""

    _vm_chain: Tuple[str, ...]

    def forward_packed(self, st: _State) -> _State:
        return _run_chain(self._vm_ctx, _chain(self), st)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "grad_checkpointing", False):
            return super(_Visible, self).forward(x)
        return super().forward(x)


class _VisibleModel(SparseLayer):
    """The model, when its ``forward_features`` only applies submodules one after the other (traced): the
    packed tokens then go from the stem to the last stage with no dense map in between."""

    _vm_chain: Tuple[str, ...]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self._vm_ctx
        if getattr(self, "grad_checkpointing", False) or not ctx.packed:
            return super().forward_features(x)
        return _publish(ctx, _run_chain(ctx, _chain(self), _received(ctx, x)))


class _ChainTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True  # record every module call, look inside none


class _Method(nn.Module):
    def __init__(self, module: nn.Module, fn):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x):
        return self.fn(self.module, x)


def _trace_chain(module: nn.Module, fn) -> Optional[Tuple[str, ...]]:
    """The submodules that ``fn(module, x)`` applies one after the other (each to the previous one's
    output, nothing else done), or None if it does anything else or cannot be traced."""
    try:
        graph = _ChainTracer().trace(_Method(module, fn))
    except Exception:  # control flow on values, unsupported Python: no chain, run as written
        return None
    names: List[str] = []
    prev = None
    for node in graph.nodes:
        if node.op == "placeholder" and prev is None:
            prev = node
        elif node.op == "call_module" and node.args == (prev,) and not node.kwargs:
            names.append(str(node.target)[len("module.") :])
            prev = node
        elif node.op == "output" and node.args == (prev,) and names:
            return tuple(names)
        else:
            return None
    return None


# Layers with a packed implementation whose 4-D input is channels-first (so a direct call can run packed).
_LAYERS = (nn.Conv2d, LayerNorm2d, nn.BatchNorm2d, nn.MaxPool2d)

_VISIBLE_CLASSES: Dict[tuple, Type[nn.Module]] = {}


def _visible_class(orig: Type[nn.Module], mixin: Type, dense: Type[nn.Module]) -> Type[nn.Module]:
    cls = _VISIBLE_CLASSES.get((orig, mixin))
    if cls is None:
        cls = type(f"Visible{dense.__name__}", (mixin, orig), {"_vm_dense_cls": dense})
        _VISIBLE_CLASSES[(orig, mixin)] = cls
    return cls


def _is_layer(m: nn.Module) -> bool:
    cls = dense_class(m)
    if cls in _LAYERS:
        return True
    # Identity returns its input object, which keeps the hand-over intact: it stays as it is.
    return isinstance(m, ZERO_PRESERVING) and cls is not nn.Identity and not isinstance(m, SparseLayer)


def visibilize(model: nn.Module, ctx: MaskContext) -> nn.Module:
    """Give the blocks, Sequentials, chain containers and packed-capable layers of a
    :func:`sparsify`-converted model the visible classes, in place (head modules are left alone).
    ``densify`` undoes both."""
    plan = []
    in_blocks = set()
    for name, child in model.named_children():
        if name in HEAD_NAMES:
            continue
        for m in child.modules():
            dense = dense_class(m)
            if id(m) in in_blocks:
                pass
            elif block_parts(m) is not None:
                plan.append((m, _VisibleBlock, dense, None))
                in_blocks.update(id(c) for c in m.modules() if c is not m)
                continue
            if dense is nn.Sequential:
                plan.append((m, _VisibleSequential, dense, None))
            elif _is_layer(m):
                plan.append((m, _VisibleLayer, dense, None))
            elif id(m) not in in_blocks and is_container(dense) and dense not in (nn.ModuleList, nn.ModuleDict):
                chain = _trace_chain(m, dense.forward)
                if chain is not None:
                    plan.append((m, _VisibleChain, dense, chain))
    features = getattr(dense_class(model), "forward_features", None)
    chain = _trace_chain(model, features) if features is not None else None
    if chain is not None:
        plan.append((model, _VisibleModel, dense_class(model), chain))
    for m, mixin, dense, chain in plan:
        if isinstance(m, (_Visible, _VisibleModel)):
            continue
        m.__class__ = _visible_class(type(m), mixin, dense)
        m._vm_ctx = ctx
        if chain is not None:
            m._vm_chain = chain
    return model
