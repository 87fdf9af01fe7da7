"""Spatial layers on packed visible tokens (videomac.sparse.packed) equal the masked reference,
a dense layer on the zero-filled map with masked outputs dropped: outputs and the gradients of the
packed input, weight and bias, in float64, for every algorithm and the edge cases (non-square maps,
per-sample different masks, samples or batches with nothing visible, 1x1 blocks)."""

import pytest
import torch
import torch.nn as nn

from videomac.masking import random_mask, upsample_mask
from videomac.sparse import packed as sc
from videomac.sparse.blocks import register_sparse_container
from videomac.sparse.context import MaskContext
from videomac.sparse.masked import sparsify

MASKS = {
    "random": lambda: torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(0)) < 0.5,
    # per-sample different counts, one sample with nothing visible
    "ragged": lambda: torch.tensor([[[1, 1, 1], [1, 1, 1]], [[0, 1, 0], [1, 0, 1]], [[0, 0, 0], [0, 1, 0]]]).bool(),
    "nothing_visible": lambda: torch.ones(2, 2, 3, dtype=torch.bool),
    "all_visible": lambda: torch.zeros(2, 2, 3, dtype=torch.bool),
}
# (name, conv, algorithms to force besides the planned one); input has 4 channels
CONVS = [
    ("3x3", lambda: nn.Conv2d(4, 5, 3, 1, 1, bias=False), ["gemm", "tile"]),
    ("3x3_bias", lambda: nn.Conv2d(4, 5, 3, 1, 1), ["gemm", "tile"]),
    ("5x5", lambda: nn.Conv2d(4, 5, 5, 1, 2), ["gemm", "tile"]),
    ("3x3_s2", lambda: nn.Conv2d(4, 5, 3, 2, 1, bias=False), []),  # ResNet's strided 3x3: one-sided halo
    ("7x7_s2", lambda: nn.Conv2d(4, 5, 7, 2, 3, bias=False), []),  # timm ResNet's stem
    ("3x3_dilated", lambda: nn.Conv2d(4, 5, 3, 1, 2, dilation=2), []),  # ResNet's output_stride 16 / 8
    ("3x3_dilated4", lambda: nn.Conv2d(4, 5, 3, 1, 4, dilation=4, bias=False), []),  # reads blocks 4 away
    ("dw7", lambda: nn.Conv2d(4, 4, 7, 1, 3, groups=4), []),  # ConvNeXt's depthwise
    ("dw3", lambda: nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False), []),
    ("2x2_s2", lambda: nn.Conv2d(4, 6, 2, 2), []),  # ConvNeXt's downsample
    ("4x4_s4", lambda: nn.Conv2d(4, 6, 4, 4), []),  # the patchify stem
    ("1x1_s2", lambda: nn.Conv2d(4, 6, 1, 2, bias=False), []),  # ResNet's downsample shortcut
]
# resolutions on the 2x3 grid: blocks of 16, 8, 4, 1 positions a side (1: every patch one position)
RESOLUTIONS = [(32, 48), (16, 24), (8, 12), (2, 3)]


def packed(ctx, x):
    lay = sc.layout(ctx, x.shape[-2:], x.device)
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])[lay.idx]


def run_layer(layer, hw, mask, how=None, dw_method=None, monkeypatch=None):
    """(max abs error over output and all gradients, plan used) against the masked reference, float64."""
    ctx = MaskContext()
    ctx.set(mask)
    layer = layer.double()
    vis = ~mask
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(mask.shape[0], layer.in_channels, *hw, dtype=torch.float64, generator=gen)
    x = x * upsample_mask(vis, hw).unsqueeze(1)
    t = packed(ctx, x).requires_grad_()
    if dw_method is not None:
        monkeypatch.setattr(sc, "_dw_method", lambda block, device: dw_method)
    res = sc.conv2d(ctx, layer, t, hw, how)
    if res is None:
        return None, "dense"
    y, out_hw = res
    xr = x.clone().requires_grad_()
    yr = packed(ctx, layer(xr))  # the masked backend keeps exactly these outputs
    assert y.shape == yr.shape and tuple(out_hw) == tuple(layer(x).shape[-2:])
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    # Unequal counts pad samples with masked blocks: their rows are outside the contract (never read, and
    # never given a gradient by the encoder), so only the valid rows are compared.
    v_in = sc.layout(ctx, hw, x.device).valid
    v_out = sc.layout(ctx, out_hw, x.device).valid
    if v_out is not None:
        g = g * v_out
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad((y * g).sum(), [t, *params], allow_unused=True)
    grads_ref = torch.autograd.grad((yr * g).sum(), [xr, *params])
    gt, gt_ref = grads[0], packed(ctx, grads_ref[0])
    if v_out is not None:
        y, yr, gt, gt_ref = y[v_out[:, 0]], yr[v_out[:, 0]], gt[v_in[:, 0]], gt_ref[v_in[:, 0]]
    errs = [(y - yr).abs().max().item() if y.numel() else 0.0]
    errs.append((gt - gt_ref).abs().max().item() if gt.numel() else 0.0)
    for a, b in zip(grads[1:], grads_ref[1:]):
        errs.append((a - b).abs().max().item())
    return max(errs), how or sc.plan(layer, hw, sc.layout(ctx, hw, x.device).block, x.device)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("name,make,forced", CONVS, ids=[c[0] for c in CONVS])
def test_conv_equals_masked_reference(name, make, forced, mask_name, monkeypatch):
    torch.manual_seed(0)
    mask = MASKS[mask_name]()
    ran = set()
    for hw in RESOLUTIONS:
        layer = make()
        hows = [None, *forced]
        for how in hows:
            methods = [None]
            if name.startswith("dw"):
                methods = ["onednn", "dwfwd", "opos"]
            for method in methods:
                err, used = run_layer(layer, hw, mask, how, method, monkeypatch)
                if used == "dense":
                    # only where blocks cannot map to blocks: a stride larger than the block
                    assert hw[0] // 2 < layer.stride[0], (name, hw)
                    continue
                ran.add(used)
                assert err < 1e-10, (name, hw, used, method, err)
    assert ran - {"dense"}


@pytest.mark.parametrize("name,make,forced", [c for c in CONVS if c[0] in ("3x3", "3x3_s2", "dw7")])
def test_chunked_kernels_are_exact(name, make, forced, monkeypatch):
    """Tiles and im2col columns built a few blocks / rows at a time give the same results."""
    monkeypatch.setattr(sc, "_MAX_TILES", 300)
    monkeypatch.setattr(sc, "_MAX_COLS", 300)
    for how in [None, *forced]:
        methods = ["onednn", "dwfwd", "opos"] if name == "dw7" else [None]
        for method in methods:
            err, used = run_layer(make(), (32, 48), MASKS["ragged"](), how, method, monkeypatch)
            assert used != "dense" and err < 1e-10, (name, used, method, err)


def test_one_chunk_per_layer_on_a_gpu():
    """CPU-sized chunks cost a dozen kernel launches each: on a GPU a layer of CNXv2-S at batch 256 runs
    as one chunk (its first stage: 3,072 visible 8x8 blocks, 14x14x96 tiles; ResNet-50's 3x3 im2col)."""
    cuda = torch.device("cuda")
    assert sc._block_chunks(256 * 12, 14 * 14 * 96, cuda) == [(0, 3072)]
    assert sc._chunks(256 * 12 * 64, 9 * 64, cuda) == [(0, 256 * 12 * 64)]
    assert len(sc._block_chunks(256 * 12, 14 * 14 * 96, torch.device("cpu"))) > 50  # bounded memory on the CPU


def test_plans():
    """Which algorithm each layer of the families gets (CPU)."""
    cpu = torch.device("cpu")
    assert sc.plan(nn.Conv2d(3, 96, 4, 4), (224, 224), (32, 32), cpu) == "patchify"
    assert sc.plan(nn.Conv2d(384, 384, 16, 16), (224, 224), (16, 16), cpu) == "patchify"
    assert sc.plan(nn.Conv2d(96, 192, 2, 2), (56, 56), (8, 8), cpu) == "patchify"
    assert sc.plan(nn.Conv2d(64, 256, 1, 2), (56, 56), (8, 8), cpu) == "subsample"
    for side in (8, 4, 2, 1):
        assert sc.plan(nn.Conv2d(96, 96, 7, 1, 3, groups=96), (7 * side,) * 2, (side, side), cpu) == "tile"
    assert sc.plan(nn.Conv2d(64, 64, 3, 1, 1), (56, 56), (8, 8), cpu) == "tile"
    for side in (4, 2, 1):
        assert sc.plan(nn.Conv2d(64, 64, 3, 1, 1), (7 * side,) * 2, (side, side), cpu) == "gemm"
    assert sc.plan(nn.Conv2d(64, 128, 3, 2, 1), (56, 56), (8, 8), cpu) == "gemm"
    assert sc.plan(nn.Conv2d(3, 64, 7, 2, 3), (224, 224), (32, 32), cpu) == "gemm"
    # no block-to-block map: a stride-2 conv on 1x1 blocks, odd sizes, grouped convs, 'same' strings
    assert sc.plan(nn.Conv2d(64, 64, 3, 2, 1), (7, 7), (1, 1), cpu) == "dense"
    assert sc.plan(nn.Conv2d(64, 64, 3, 1, 0), (56, 56), (8, 8), cpu) == "dense"
    assert sc.plan(nn.Conv2d(64, 64, 3, 1, 1, groups=2), (56, 56), (8, 8), cpu) == "dense"
    assert sc.plan(nn.Conv2d(64, 64, 3, padding="same"), (56, 56), (8, 8), cpu) == "dense"


@pytest.mark.parametrize("mask_name", ["random", "ragged", "nothing_visible"])
def test_max_pool_equals_masked_backend(mask_name):
    """timm ResNet's 3x3/2 max-pool: the max over visible inputs only (masked ones are -inf), as the
    masked backend's; gradients to the same input."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(3, 2, 1)

    mask = MASKS[mask_name]()
    for hw in [(32, 48), (16, 24)]:
        ctx = MaskContext()
        net = sparsify(register_sparse_container(Net)(), ctx)
        ctx.set(mask)
        x = torch.randn(mask.shape[0], 4, *hw, dtype=torch.float64) - 1.0  # negative: zeros would win
        x = (x * upsample_mask(~mask, hw).unsqueeze(1)).requires_grad_()
        ref = packed(ctx, net.pool(x))
        t = packed(ctx, x.detach()).requires_grad_()
        y, out_hw = sc.max_pool2d(ctx, net.pool, t, hw)
        assert out_hw == (hw[0] // 2, hw[1] // 2)
        v = sc.layout(ctx, out_hw, x.device).valid  # padding rows (unequal counts) are not compared
        ok = slice(None) if v is None else v[:, 0]
        torch.testing.assert_close(y[ok], ref[ok], rtol=0, atol=0)
        g = torch.randn_like(y) * (1 if v is None else v)
        (gx,) = torch.autograd.grad((ref * g).sum(), [x])
        (gt,) = torch.autograd.grad((y * g).sum(), [t])
        vi = sc.layout(ctx, hw, x.device).valid
        oki = slice(None) if vi is None else vi[:, 0]
        torch.testing.assert_close(gt[oki], packed(ctx, gx)[oki], rtol=0, atol=1e-12)  # sums in another order


def test_layout_is_block_major():
    mask = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 1]]]).bool()
    ctx = MaskContext()
    ctx.set(mask)
    lay = sc.layout(ctx, (4, 4), torch.device("cpu"))
    # unequal counts: each sample padded to 2 blocks with its first masked block (valid False)
    assert lay.block == (2, 2) and lay.m == 4 and lay.n == 16 and lay.per_sample == 8
    # block (0,0) of sample 0, block (1,1) of sample 0, block (1,0) of sample 1, then the padding block
    # (0,0) of sample 1, each row-major inside
    assert lay.idx.tolist() == [0, 1, 4, 5, 10, 11, 14, 15, 16 + 8, 16 + 9, 16 + 12, 16 + 13, 16, 17, 20, 21]
    assert lay.valid.view(-1).tolist() == [True] * 12 + [False] * 4
    # padding rows are no token of the row map: their positions read the zero row
    assert sc._row_map(ctx, (4, 4), torch.device("cpu"))[[16, 17, 20, 21]].tolist() == [16] * 4


def test_autocast_bf16_runs_in_bf16():
    mask = random_mask(2, (2, 3), 0.5, generator=torch.Generator().manual_seed(0))
    ctx = MaskContext()
    ctx.set(mask)
    x = torch.randn(2, 8, 16, 24) * upsample_mask(~mask, (16, 24)).unsqueeze(1)
    t = packed(ctx, x)
    for conv in [nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 7, 1, 3, groups=8), nn.Conv2d(8, 16, 2, 2)]:
        ref = sc.conv2d(ctx, conv, t, (16, 24))[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = sc.conv2d(ctx, conv, t, (16, 24))[0]
        assert y.dtype == torch.bfloat16
        assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_backward_saves_packed_tensors_only():
    """The tile and im2col kernels save the packed input (not tiles or columns) for backward."""
    mask = random_mask(8, (7, 7), 0.75, generator=torch.Generator().manual_seed(0))
    ctx = MaskContext()
    ctx.set(mask)
    hw = (56, 56)
    n = sc.layout(ctx, hw, torch.device("cpu")).n
    for conv, how in [
        (nn.Conv2d(16, 16, 3, 1, 1), "gemm"),
        (nn.Conv2d(16, 16, 3, 1, 1), "tile"),
        (nn.Conv2d(16, 16, 7, 1, 3, groups=16), "tile"),
    ]:
        saved = []

        def pack(tensor, saved=saved):
            saved.append(tensor.numel() if tensor.dtype.is_floating_point else 0)
            return tensor

        t = torch.randn(n, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
            sc.conv2d(ctx, conv, t, hw, how)
        assert sum(saved) <= n * 16 + 2 * conv.weight.numel(), (how, sum(saved), n * 16)
