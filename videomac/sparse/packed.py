"""Spatial layers on packed visible tokens: convolutions and max-pooling that compute only the visible
outputs, exactly (the ``visible`` backend's spatial layers; :mod:`.visible` runs everything else).

Packed layout. Masks are aligned to the patch grid (the model's total stride P), so at a layer of
resolution ``(H, W)`` every visible patch is a ``(H/gh) x (W/gw)`` block of positions. The packed
tokens of a resolution are a ``(N, C)`` tensor, *block-major*: the visible blocks in row-major order
over ``(b, gy, gx)``, and inside each block its positions in row-major order. So the tokens of one
sample are contiguous, a block is a ``(bh, bw, C)`` slab, and a stride-s layer whose kernel equals its
stride maps each block to one block with a reshape.

Algorithms (all exact: masked inputs read as zeros, the masked backend's semantics):

- ``patchify`` (kernel == stride, no padding; the 4x4 stem, ConvNeXt's 2x2 downsample, the 16x16
  isotropic stem): space-to-depth inside each block and one matrix product; strided 1x1 convs pick
  rows of each block (a strided view).
- ``gemm`` (im2col over packed neighbourhoods): each visible output gathers its k*k input tokens (a
  zero row where the input is masked or outside) and one matrix product runs over the ``(N, k*k*C)``
  columns. Backward: the input gradient folds the column gradient back with an index-add (an input
  is read by several outputs); the weight gradient gathers the columns again (only the packed input
  is saved). Also ResNet's strided 3x3 convs (a one-sided halo), timm's 7x7/2 stem and dilated convs
  (ResNets at output_stride 16 / 8: the neighbourhood is spread by the dilation). Max-pooling
  gathers the same neighbourhoods (masked inputs read as -inf) and takes the max.
- ``tile`` (stride-1 convs with 'same' padding): each visible block and its (k-1)/2 halo is gathered
  into a tile, and the dense conv (oneDNN / cuDNN) runs on the batch of tiles without padding: it
  computes the visible outputs only (the halo is read, not computed). The input gradient is the same
  tile conv of the output gradient with the flipped kernel; the weight gradient comes from the tiles
  (gathered again in backward). For depthwise convs that weight gradient is one depthwise *forward*
  conv with M*C channels (8x8 and 4x4 blocks) or one product-sum per block position (2x2, 1x1):
  oneDNN's own depthwise weight gradient is several times slower on CPU.

Tiles and columns are built a few blocks / rows at a time (bounded memory, reused allocations).
Which one a conv uses is chosen per layer by :func:`plan` (measurements in docs/performance.md).
Index tables are built once per forward pass and resolution and cached in the encoder's
:class:`~videomac.sparse.context.MaskContext`.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from videomac.sparse.context import MaskContext

__all__ = [
    "Layout",
    "layout",
    "ConvGeom",
    "conv_geom",
    "plan",
    "conv2d",
    "max_pool2d",
    "gemm_conv",
    "gemm_conv_backward",
    "tile_conv",
    "tile_conv_backward",
]

HW = Tuple[int, int]

# im2col columns and tiles are built in chunks of at most this many elements. On the CPU: bounded
# memory, and temporaries small enough for the allocator to reuse (fresh large buffers cost page
# faults). On a GPU each chunk costs a dozen kernel launches while its arithmetic takes microseconds:
# CPU-sized chunks made a CNXv2-S step launch 13,099 kernels and run 5x slower than its GPU work
# (docs/performance.md), so there one chunk holds a whole layer up to a much larger bound.
_MAX_COLS = 1 << 20
_MAX_TILES = 1 << 20
_MAX_GPU = 1 << 28


def _limit(cpu_limit: int, device) -> int:
    return cpu_limit if torch.device(device).type == "cpu" else _MAX_GPU


# ----------------------------------------------------------------------------------------------
# Packed layout


class Layout(NamedTuple):
    """The packed visible tokens of one resolution (block-major, see the module docstring).

    Every sample holds ``K`` blocks (``K * bh * bw`` tokens): its visible patches in row-major order and,
    when samples have unequal counts, masked patches after them as padding (``valid`` False). Padding
    rows are computed like the others but never read by a neighbour, counted in a statistic or written
    out, so the results stay exact; with equal counts (every :func:`~videomac.masking.random_mask`)
    there is none and ``valid`` is None. All sizes follow from the mask's shape and ``K``."""

    idx: torch.Tensor  # (N,) flat dense position b*H*W + y*W + x of each token
    B: int
    per_sample: int  # tokens per sample, K * bh * bw
    hw: HW
    block: HW  # (bh, bw): positions of one patch at this resolution
    grid: HW  # (gh, gw): the patch grid
    blocks: torch.Tensor  # (M,) = (B * K,) the patches, flat over (b, gy, gx)
    valid: Optional[torch.Tensor]  # (N, 1) bool, False on padding rows; None when there are none

    @property
    def n(self) -> int:
        return int(self.idx.numel())

    @property
    def m(self) -> int:
        return int(self.blocks.numel())


def _active(ctx: MaskContext) -> torch.Tensor:
    if ctx.active is None:
        raise RuntimeError("visible layer called outside SparseEncoder.forward (no mask set)")
    return ctx.active


def _patches(ctx: MaskContext, device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(B*K,)`` patches of the packed layout, flat over (b, gy, gx), and the ``(B, K)`` valid flags (or
    None): sorted, not ``nonzero``, so the shape is ``(B*K,)`` whatever the mask holds (no host sync)."""
    key = ("patches", str(device))
    hit = ctx._cache.get(key)
    if hit is None:
        active = _active(ctx).to(device)
        B, gh, gw = active.shape
        L, K, counts = gh * gw, ctx.keep, None
        if K is None:  # unknown: the largest count, one host sync (pass keep= to avoid it)
            counts = active.reshape(B, L).sum(1)
            lo, K = (int(v) for v in torch.stack(torch.aminmax(counts)).tolist()) if B else (0, 0)
            counts = None if lo == K else counts
        ar = torch.arange(L, device=device)
        # visible cells first, each group in row-major order (the keys are distinct)
        order = torch.where(active.reshape(B, L), ar, ar + L).argsort(dim=1)[:, :K]
        blocks = (order + (torch.arange(B, device=device) * L).view(B, 1)).reshape(-1)
        valid = None if counts is None else torch.arange(K, device=device).view(1, K) < counts.view(B, 1)
        hit = ctx._cache[key] = (blocks, valid)
    return hit


def layout(ctx: MaskContext, hw: HW, device) -> Layout:
    """The :class:`Layout` of resolution ``hw`` for the mask of the current forward pass (cached)."""
    hw = (int(hw[0]), int(hw[1]))
    key = ("layout", hw, str(device))
    lay = ctx._cache.get(key)
    if lay is None:
        blocks, valid = _patches(ctx, device)
        B, gh, gw = ctx.active.shape
        H, W = hw
        if H % gh or W % gw:
            raise ValueError(f"resolution {H}x{W} is not a multiple of the mask grid {gh}x{gw}")
        bh, bw = H // gh, W // gw
        b, gy, gx = blocks // (gh * gw), blocks // gw % gh, blocks % gw
        origin = b * (H * W) + gy * (bh * W) + gx * bw
        inner = (torch.arange(bh, device=device) * W).view(bh, 1) + torch.arange(bw, device=device)
        idx = (origin.view(-1, 1, 1) + inner).reshape(-1)
        if valid is not None:
            valid = valid.reshape(-1, 1).repeat_interleave(bh * bw, dim=0)
        lay = Layout(idx, B, blocks.numel() // max(B, 1) * bh * bw, hw, (bh, bw), (gh, gw), blocks, valid)
        ctx._cache[key] = lay
    return lay


def _row_map(ctx: MaskContext, hw: HW, device) -> torch.Tensor:
    """``(B*H*W,)``: the token of each dense position, N (the zero row) where masked or padding."""
    key = ("rows", tuple(hw), str(device))
    rows = ctx._cache.get(key)
    if rows is None:
        lay = layout(ctx, hw, device)
        size = lay.B * hw[0] * hw[1]
        idx = lay.idx if lay.valid is None else torch.where(lay.valid.view(-1), lay.idx, size)
        # one spare slot at the end takes the padding rows' writes
        rows = torch.full((size + 1,), lay.n, dtype=torch.long, device=device)
        rows = rows.index_copy(0, idx, torch.arange(lay.n, device=device))[:size]
        ctx._cache[key] = rows
    return rows


def _coords(lay: Layout):
    H, W = lay.hw
    return lay.idx // (H * W), lay.idx // W % H, lay.idx % W


# ----------------------------------------------------------------------------------------------
# Conv geometry and the index tables


class ConvGeom(NamedTuple):
    kernel: HW
    stride: HW
    padding: HW
    dilation: HW

    def out_hw(self, hw: HW) -> HW:
        return tuple(
            (hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) // self.stride[i] + 1
            for i in range(2)
        )

    @property
    def k(self) -> int:
        return self.kernel[0] * self.kernel[1]


def conv_geom(m: nn.Module) -> Optional[ConvGeom]:
    """The geometry of a Conv2d/MaxPool2d, or None if it has one the packed layers do not handle."""
    pair = nn.modules.utils._pair
    padding = m.padding
    if isinstance(padding, str) or getattr(m, "padding_mode", "zeros") != "zeros":
        return None
    if getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
        return None
    stride = m.stride if m.stride is not None else m.kernel_size
    return ConvGeom(pair(m.kernel_size), pair(stride), pair(padding), pair(m.dilation))


def _neighbours(ctx: MaskContext, hw: HW, g: ConvGeom, device) -> torch.Tensor:
    """``(N_out, k*k)``: the input token at each kernel offset of each visible output (N_in if none)."""
    key = ("nbr", tuple(hw), g, str(device))
    nbr = ctx._cache.get(key)
    if nbr is None:
        out = layout(ctx, g.out_hw(hw), device)
        rows = _row_map(ctx, hw, device)
        H, W = hw
        b, oy, ox = _coords(out)
        ky = torch.arange(g.kernel[0], device=device).repeat_interleave(g.kernel[1]) * g.dilation[0]
        kx = torch.arange(g.kernel[1], device=device).repeat(g.kernel[0]) * g.dilation[1]
        iy = (oy * g.stride[0] - g.padding[0]).unsqueeze(1) + ky
        ix = (ox * g.stride[1] - g.padding[1]).unsqueeze(1) + kx
        ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        flat = b.unsqueeze(1) * (H * W) + iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)
        nbr = torch.where(ok, rows[flat], torch.full_like(flat, layout(ctx, hw, device).n))
        ctx._cache[key] = nbr
    return nbr


def _tile_index(ctx: MaskContext, hw: HW, g: ConvGeom, device) -> torch.Tensor:
    """``(M*Th*Tw,)``: the input token at each position of each visible block's tile (N if none).

    A tile is the block's input window: ``(bo-1)*s + (k-1)*d + 1`` positions per side, starting
    ``padding`` before the block (so for stride 1 and 'same' padding, the block plus its halo)."""
    key = ("tiles", tuple(hw), g, str(device))
    tidx = ctx._cache.get(key)
    if tidx is None:
        lay = layout(ctx, hw, device)
        rows = _row_map(ctx, hw, device)
        H, W = hw
        (bh, bw), (gh, gw) = lay.block, lay.grid
        th, tw = _tile_hw(lay.block, g)
        b, gy, gx = lay.blocks // (gh * gw), lay.blocks // gw % gh, lay.blocks % gw
        iy = (gy * bh - g.padding[0]).view(-1, 1, 1) + torch.arange(th, device=device).view(1, th, 1)
        ix = (gx * bw - g.padding[1]).view(-1, 1, 1) + torch.arange(tw, device=device).view(1, 1, tw)
        ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        flat = b.view(-1, 1, 1) * (H * W) + iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)
        tidx = torch.where(ok, rows[flat], torch.full_like(flat, lay.n)).reshape(-1)
        ctx._cache[key] = tidx
    return tidx


def _tile_hw(block: HW, g: ConvGeom) -> HW:
    return tuple((block[i] // g.stride[i] - 1) * g.stride[i] + (g.kernel[i] - 1) * g.dilation[i] + 1 for i in range(2))


# ----------------------------------------------------------------------------------------------
# Kernels: custom ops (torch.library) with fake shapes and autograd, so torch.compile traces through
# them as single nodes; they save packed tensors only


def _pad_row(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """``x`` with one extra row of ``value`` (the row that masked/outside positions read)."""
    out = x.new_empty(x.shape[0] + 1, x.shape[1])
    out[:-1].copy_(x)
    out[-1].fill_(value)
    return out


def _gather_rows(xz: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return xz.index_select(0, index.reshape(-1))


def _chunks(n: int, row_elems: int, device="cpu"):
    step = max(1, _limit(_MAX_COLS, device) // max(row_elems, 1))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _gemm_weight(weight: torch.Tensor, ck: bool) -> torch.Tensor:
    c_out = weight.shape[0]
    return weight.reshape(c_out, -1) if ck else weight.permute(0, 2, 3, 1).reshape(c_out, -1)


@torch.library.custom_op("videomac::gemm_conv", mutates_args=())
def gemm_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], nbr: Tensor) -> Tensor:
    """im2col over packed neighbourhoods: ``y = cols(x) @ W^T``; groups == 1.

    The columns of a row are ordered (offset, channel) as gathered, and the weight is reordered to
    match, when the columns are the larger tensor; else the columns are reordered to (channel,
    offset), the weight's own order (deep layers: few tokens, big weights). The input gradient folds
    the column gradient back with an index-add (inputs read by several outputs); only ``x`` is saved.
    """
    n_out, k = nbr.shape
    c_out, c_in = weight.shape[:2]
    ck = n_out <= c_out
    w2 = _gemm_weight(weight, ck)
    xz = _pad_row(x)
    y = x.new_empty(n_out, c_out)
    for a, b in _chunks(n_out, k * c_in, x.device):
        cols = _columns(xz, nbr[a:b], ck)
        if bias is not None:
            torch.addmm(bias, cols, w2.t(), out=y[a:b])
        else:
            torch.mm(cols, w2.t(), out=y[a:b])
    return y


@gemm_conv.register_fake
def _(x, weight, bias, nbr):
    return x.new_empty(nbr.shape[0], weight.shape[0])


@torch.library.custom_op("videomac::gemm_conv_backward", mutates_args=())
def gemm_conv_backward(
    g: Tensor, x: Tensor, weight: Tensor, nbr: Tensor, need_input: bool, need_weight: bool
) -> Tuple[Tensor, Tensor]:
    """The input and weight gradients of :func:`gemm_conv` (each empty where not needed)."""
    g = g.contiguous()
    n_out, k = nbr.shape
    c_out, c_in = weight.shape[:2]
    ck = n_out <= c_out
    gx, gw = x.new_empty(0, c_in), weight.new_empty(0)
    if need_input:
        # the reordered weight is made again rather than saved (it is weight-sized)
        w2 = _gemm_weight(weight, ck)
        gxz = x.new_zeros(x.shape[0] + 1, c_in)
        for a, b in _chunks(n_out, k * c_in, x.device):
            gcols = torch.mm(g[a:b], w2)
            gcols = gcols.view(b - a, c_in, k).transpose(1, 2) if ck else gcols.view(b - a, k, c_in)
            gxz.index_add_(0, nbr[a:b].reshape(-1), gcols.reshape(-1, c_in))
        gx = gxz[:-1].contiguous()
    if need_weight:
        xz = _pad_row(x)
        gw2 = None
        for a, b in _chunks(n_out, k * c_in, x.device):
            cols = _columns(xz, nbr[a:b], ck)
            gw2 = torch.mm(g[a:b].t(), cols) if gw2 is None else gw2.addmm_(g[a:b].t(), cols)
        if gw2 is None:
            gw2 = x.new_zeros(c_out, k * c_in)
        kh, kw = weight.shape[2:]
        gw = gw2.view_as(weight) if ck else gw2.view(c_out, kh, kw, c_in).permute(0, 3, 1, 2).contiguous()
    return gx, gw


@gemm_conv_backward.register_fake
def _(g, x, weight, nbr, need_input, need_weight):
    gx = x.new_empty(x.shape[0] if need_input else 0, weight.shape[1])
    return gx, weight.new_empty(weight.shape if need_weight else (0,))


def _gemm_setup(ctx, inputs, output):
    x, weight, bias, nbr = inputs
    ctx.save_for_backward(x, weight, nbr)
    ctx.has_bias = bias is not None


def _gemm_backward(ctx, g):
    x, weight, nbr = ctx.saved_tensors
    need = ctx.needs_input_grad
    gx, gw = gemm_conv_backward(g, x, weight, nbr, need[0], need[1])
    gb = g.sum(0) if ctx.has_bias and need[2] else None
    return gx if need[0] else None, gw if need[1] else None, gb, None


gemm_conv.register_autograd(_gemm_backward, setup_context=_gemm_setup)


def _columns(xz: torch.Tensor, nbr: torch.Tensor, ck: bool) -> torch.Tensor:
    """im2col rows ``(n, k*C)`` ordered (offset, channel), or ``(n, C*k)`` ordered (channel, offset) if ``ck``."""
    n, k = nbr.shape
    cols = _gather_rows(xz, nbr).view(n, k, xz.shape[1])
    return cols.transpose(1, 2).reshape(n, -1) if ck else cols.view(n, -1)


def _blocks(t: torch.Tensor, m: int, bh: int, bw: int) -> torch.Tensor:
    """Packed tokens as ``(M, C, bh, bw)`` blocks (channels-last memory); a view."""
    return t.view(m, bh, bw, t.shape[1]).permute(0, 3, 1, 2)


def _tokens(y: torch.Tensor) -> torch.Tensor:
    """``(M, C, bh, bw)`` blocks -> packed ``(M*bh*bw, C)`` tokens (a view when channels-last)."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _conv_weight_grad(g: torch.Tensor, tiles: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight gradient of an unpadded stride-1 conv of ``tiles`` given its output gradient ``g``."""
    args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups, [False, True, False])
    return torch.ops.aten.convolution_backward(g, tiles, weight, *args)[1]


def _dw_weight_grad(xz, tidx, g, m: int, block: HW, tile: HW, weight: torch.Tensor, method: str) -> torch.Tensor:
    """The weight gradient ``(C, 1, kh, kw)`` of a stride-1 depthwise tile conv: per channel, the
    correlation of the input tiles with the output-gradient blocks, summed over blocks.

    ``'dwfwd'``: as one depthwise *forward* conv with ``M*C`` channels (each block's gradient is the
    kernel of its tile), then a sum over blocks; ``'opos'``: one product-sum per output position of a
    block (few on small blocks); ``'onednn'``: the library's depthwise weight gradient (cuDNN; on CPU
    several times slower than the others, measured in docs/performance.md). ``xz``: the packed input
    with its zero row."""
    c = xz.shape[1]
    (bh, bw), (th, tw) = block, tile
    kh, kw = weight.shape[-2:]
    if m == 0:
        return torch.zeros_like(weight)
    gl = g.view(m, bh, bw, c)
    if method == "dwfwd":
        order = tidx.view(m, th, tw).permute(1, 2, 0).reshape(-1)  # tiles as (th, tw, M, C): one image
        inp = _gather_rows(xz, order).view(1, th, tw, m * c).permute(0, 3, 1, 2)
        kernels = gl.permute(0, 3, 1, 2).reshape(m * c, 1, bh, bw)
        return F.conv2d(inp, kernels, None, 1, 0, 1, m * c).view(m, c, kh, kw).sum(0).unsqueeze(1)
    tiles = _gather_rows(xz, tidx).view(m, th, tw, c).permute(0, 3, 1, 2)
    if method == "opos":
        tl = tiles.permute(0, 2, 3, 1)
        out = None
        for oy in range(bh):
            for ox in range(bw):
                part = (tl[:, oy : oy + kh, ox : ox + kw] * gl[:, oy, ox, None, None, :]).sum(0)
                out = part if out is None else out.add_(part)
        return out.permute(2, 0, 1).unsqueeze(1).contiguous()
    return _conv_weight_grad(_blocks(g, m, bh, bw), tiles, weight, c)


def _block_chunks(m: int, tile_elems: int, device="cpu"):
    """Ranges of blocks whose tiles hold at most ``_MAX_TILES`` elements on the CPU (at least one block
    each: the allocator reuses their memory instead of faulting in fresh pages), ``_MAX_GPU`` elsewhere."""
    step = max(1, _limit(_MAX_TILES, device) // max(tile_elems, 1))
    return [(i, min(m, i + step)) for i in range(0, m, step)]


def _tile_conv(xz, tidx, weight, bias, groups: int, m: int, block: HW, tile: HW) -> torch.Tensor:
    """Packed output tokens of the unpadded conv of every visible block's tile (chunked)."""
    (bh, bw), (th, tw) = block, tile
    c_in, c_out = xz.shape[1], weight.shape[0]
    chunks = _block_chunks(m, th * tw * c_in, xz.device)
    y = None if len(chunks) == 1 else xz.new_empty(m * bh * bw, c_out)
    for a, b in chunks:
        t = _gather_rows(xz, tidx[a * th * tw : b * th * tw]).view(b - a, th, tw, c_in).permute(0, 3, 1, 2)
        out = F.conv2d(t, weight, bias, 1, 0, 1, groups)
        if y is None:
            return _tokens(out)
        y[a * bh * bw : b * bh * bw].view(b - a, bh, bw, c_out).copy_(out.permute(0, 2, 3, 1))
    return y if y is not None else xz.new_empty(0, c_out)


@torch.library.custom_op("videomac::tile_conv", mutates_args=())
def tile_conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], tidx: Tensor, block: List[int], tile: List[int], groups: int
) -> Tensor:
    """Stride-1 'same' conv on the tiles of the visible blocks (block + halo), dense conv inside."""
    m = tidx.numel() // (tile[0] * tile[1])
    return _tile_conv(_pad_row(x), tidx, weight, bias, groups, m, tuple(block), tuple(tile)).contiguous()


@tile_conv.register_fake
def _(x, weight, bias, tidx, block, tile, groups):
    return x.new_empty(tidx.shape[0] // (tile[0] * tile[1]) * block[0] * block[1], weight.shape[0])


@torch.library.custom_op("videomac::tile_conv_backward", mutates_args=())
def tile_conv_backward(
    g: Tensor,
    x: Tensor,
    weight: Tensor,
    tidx: Tensor,
    block: List[int],
    tile: List[int],
    groups: int,
    dw_method: str,
    need_input: bool,
    need_weight: bool,
) -> Tuple[Tensor, Tensor]:
    """The input and weight gradients of :func:`tile_conv` (each empty where not needed)."""
    (bh, bw), (th, tw) = block, tile
    m = tidx.numel() // (th * tw)
    g = g.contiguous()
    gx, gw = x.new_empty(0, x.shape[1]), weight.new_empty(0)
    if need_input:
        # The input gradient of a stride-1 'same' conv is the same conv of the output gradient
        # with the flipped kernel (in/out channels swapped); masked outputs have zero gradient.
        wf = weight.flip(-1, -2)
        if groups == 1:
            wf = wf.transpose(0, 1)
        gx = _tile_conv(_pad_row(g), tidx, wf, None, groups, m, (bh, bw), (th, tw)).contiguous()
    if need_weight:
        xz = _pad_row(x)
        gw = None
        for a, b in _block_chunks(m, th * tw * x.shape[1], x.device):
            tid, gc = tidx[a * th * tw : b * th * tw], g[a * bh * bw : b * bh * bw]
            if groups == 1:
                t = _gather_rows(xz, tid).view(b - a, th, tw, -1).permute(0, 3, 1, 2)
                part = _conv_weight_grad(_blocks(gc, b - a, bh, bw), t, weight, 1)
            else:
                part = _dw_weight_grad(xz, tid, gc, b - a, (bh, bw), (th, tw), weight, dw_method)
            gw = part if gw is None else gw.add_(part)
        gw = torch.zeros_like(weight) if gw is None else gw.contiguous()
    return gx, gw


@tile_conv_backward.register_fake
def _(g, x, weight, tidx, block, tile, groups, dw_method, need_input, need_weight):
    gx = x.new_empty(x.shape if need_input else (0, x.shape[1]))
    return gx, weight.new_empty(weight.shape if need_weight else (0,))


def _tile_setup(ctx, inputs, output):
    x, weight, bias, tidx, block, tile, groups = inputs
    ctx.save_for_backward(x, weight, tidx)
    ctx.geo = (block, tile, groups, _dw_method(tuple(block), x.device), bias is not None)


def _tile_backward(ctx, g):
    x, weight, tidx = ctx.saved_tensors
    block, tile, groups, dw_method, has_bias = ctx.geo
    need = ctx.needs_input_grad
    gx, gw = tile_conv_backward(g, x, weight, tidx, block, tile, groups, dw_method, need[0], need[1])
    gb = g.sum(0) if has_bias and need[2] else None
    return gx if need[0] else None, gw if need[1] else None, gb, None, None, None, None


tile_conv.register_autograd(_tile_backward, setup_context=_tile_setup)


# ----------------------------------------------------------------------------------------------
# Planning and the layer entry points


def _dw_method(block: HW, device) -> str:
    """How the depthwise weight gradient is computed (see :func:`_dw_weight_grad`)."""
    if device.type != "cpu":
        return "onednn"  # cuDNN's depthwise weight gradient
    return "dwfwd" if min(block) >= 4 else "opos"


def plan(m: nn.Conv2d, hw: HW, block: HW, device) -> str:
    """How a Conv2d runs on packed tokens at input resolution ``hw`` with ``block``-sized patches:
    ``'patchify'``, ``'subsample'``, ``'tile'``, ``'gemm'``, or ``'dense'`` (scatter, dense conv, gather)."""
    g = conv_geom(m)
    if g is None:
        return "dense"
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g
    out = g.out_hw(hw)
    if out[0] <= 0 or out[1] <= 0 or hw[0] % sh or hw[1] % sw or out != (hw[0] // sh, hw[1] // sw):
        return "dense"  # the output grid is not the input grid subsampled: blocks do not map to blocks
    if block[0] % sh or block[1] % sw:
        return "dense"
    if (ph, pw) == (0, 0) and m.groups == 1:
        if (kh, kw) == (1, 1):
            return "subsample"
        if (kh, kw) == (sh, sw):
            return "patchify"
    same = (sh, sw) == (1, 1) and (dh, dw) == (1, 1) and kh % 2 == 1 and kw % 2 == 1
    same = same and (ph, pw) == ((kh - 1) // 2, (kw - 1) // 2)
    if m.groups == m.in_channels == m.out_channels and same:
        return "tile"  # depthwise: the dense depthwise conv on tiles (im2col would be memory-bound)
    if m.groups != 1:
        return "dense"  # grouped, and dilated depthwise (ConvNeXt at output_stride 16 / 8)
    # Tiles cost (block + halo)^2 / block^2 times the visible work but run the fast dense conv; the
    # im2col product does only visible work. Measured on CPU (docs/performance.md): tiles win for 3x3
    # convs on 8x8 blocks (overhead 1.56), tie on 4x4 (2.25), lose on 2x2 and 1x1.
    overhead = (block[0] + kh - 1) * (block[1] + kw - 1) / (block[0] * block[1])
    return "tile" if same and overhead <= 1.6 else "gemm"


def _autocast(t: torch.Tensor, *params):
    """Cast the operands as autocast would (convs run in its lower precision), or leave them."""
    dev = t.device.type
    if not torch.is_autocast_enabled(dev):
        return (t, *params)
    dt = torch.get_autocast_dtype(dev)
    return (t.to(dt), *(p.to(dt) if p is not None else None for p in params))


def conv2d(
    ctx: MaskContext, m: nn.Conv2d, t: torch.Tensor, hw: HW, how: Optional[str] = None
) -> Optional[Tuple[torch.Tensor, HW]]:
    """Run ``m`` on packed tokens ``t`` at ``hw``: ``(tokens, out_hw)``, or None where it must run dense.
    ``how`` overrides :func:`plan` (tests and benchmarks; it must be applicable)."""
    lay = layout(ctx, hw, t.device)
    how = how or plan(m, hw, lay.block, t.device)
    if how == "dense":
        return None
    g = conv_geom(m)
    out_hw = g.out_hw(hw)
    (bh, bw), (sh, sw) = lay.block, g.stride
    t, w, b = _autocast(t, m.weight, m.bias)
    with torch.autocast(t.device.type, enabled=False):
        if how == "subsample":
            t = t.view(lay.m, bh // sh, sh, bw // sw, sw, t.shape[1])[:, :, 0, :, 0].reshape(-1, t.shape[1])
            return F.linear(t, w.flatten(1), b), out_hw
        if how == "patchify":
            c = t.shape[1]
            t = t.view(lay.m, bh // sh, sh, bw // sw, sw, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, sh * sw * c)
            return F.linear(t, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), b), out_hw
        if how == "tile":
            tidx = _tile_index(ctx, hw, g, t.device)
            if lay.valid is not None:
                # A padding block's tile reads real neighbours, so the input gradient its own rows get
                # is not zero: cut it here (nothing reads those rows).
                t = torch.where(lay.valid, t, torch.zeros((), dtype=t.dtype, device=t.device))
            y = tile_conv(t, w, b, tidx, list(lay.block), list(_tile_hw(lay.block, g)), m.groups)
            return y, out_hw
        return gemm_conv(t, w, b, _neighbours(ctx, hw, g, t.device)), out_hw


def max_pool2d(ctx: MaskContext, m: nn.MaxPool2d, t: torch.Tensor, hw: HW) -> Optional[Tuple[torch.Tensor, HW]]:
    """Max-pool over the visible inputs of each visible output's window, or None where it must run dense."""
    g = conv_geom(m)
    if g is None:
        return None
    lay = layout(ctx, hw, t.device)
    out = g.out_hw(hw)
    if hw[0] % g.stride[0] or hw[1] % g.stride[1] or out != (hw[0] // g.stride[0], hw[1] // g.stride[1]):
        return None
    if lay.block[0] % g.stride[0] or lay.block[1] % g.stride[1]:
        return None
    nbr = _neighbours(ctx, hw, g, t.device)
    cols = _gather_rows(_pad_row(t, float("-inf")), nbr).view(nbr.shape[0], nbr.shape[1], t.shape[1])
    y = cols.max(dim=1).values
    # Every visible output's window holds a visible input (its own position); kept safe anyway.
    return y.masked_fill(y == float("-inf"), 0.0), out
