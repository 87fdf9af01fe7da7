"""The 'visible' backend (every layer on visible positions only) equals the 'masked' one: outputs,
input and parameter gradients, BatchNorm statistics, per-sample GRN, to_dense(); packed tokens flow
from the stem to the last stage; backward saves packed tensors."""

import collections

import pytest
import timm
import torch
import torch.nn as nn
from test_sparse import DILATED, FAMILIES, make

import videomac
from videomac.masking import random_mask
from videomac.pretrain.model import VideoMAC
from videomac.sparse import packed, visible
from videomac.sparse.context import SparseLayer as _Sparse
from videomac.sparse.visible import _grn, _index, _VisibleBlock

# fp64 repeats the fp32 check to a tighter tolerance, at 3-8 s on the larger models: the fast subset keeps fp32 for
# every family (atto stands for ConvNeXt-V2) and fp64 for the two smallest
V2_LIKE_ATTO = {"videomac_cnxv2_t"}
FP64_FAST = {"videomac_rn18", "videomac_cnxv2_atto"}

# (ratio, input size): 0.9 needs a grid of >= 10 cells to keep any visible patch; None: per-sample
# different counts, one sample with a single visible patch, one with none.
CASES = [(0.0, (64, 96)), (0.5, (64, 96)), (0.9, (128, 160)), (None, (64, 96))]
RAGGED = torch.tensor([[[0, 1, 1], [1, 0, 0]], [[1, 1, 1], [1, 1, 1]], [[1, 1, 0], [1, 1, 1]]]).bool()
# float64: the same math gives the same numbers (up to summation order); float32: rounding, which
# BatchNorm over the few visible positions of the 0.9 case amplifies (the old backend's level).
TOL = {torch.float64: dict(out=1e-10, grad_rel=1e-9, buf=1e-10), torch.float32: dict(out=1e-4, grad_rel=1e-3, buf=1e-5)}


def pair(name, train=True, dtype=torch.float32, **kwargs):
    return (
        videomac.SparseEncoder(make(name, train=train, **kwargs).to(dtype), backend="masked"),
        videomac.SparseEncoder(make(name, train=train, **kwargs).to(dtype), backend="visible"),
    )


def case_inputs(ratio, hw, dtype=torch.float32):
    grid = (hw[0] // 32, hw[1] // 32)
    if ratio is None:
        mask = RAGGED
    else:
        mask = random_mask(2, grid, ratio, generator=torch.Generator().manual_seed(1))
    x = torch.randn(mask.shape[0], 3, *hw, generator=torch.Generator().manual_seed(2), dtype=dtype)
    return x, mask


def run_both(a, b, x, mask):
    """Outputs of both encoders and their gradients for the same random linear loss."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa, mask), b(xb, mask)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5), dtype=ya.dtype).to(ya.device)
    (ya * g).mean().backward()
    (yb * g).mean().backward()
    return ya, yb, xa.grad, xb.grad


def max_grad_diff(a, b, relative=False):
    diffs = []
    for p, q in zip(a.parameters(), b.parameters()):
        if p.grad is not None:
            d = (p.grad - q.grad).abs().max().item()
            diffs.append(d / max(p.grad.abs().max().item(), 1e-30) if relative else d)
    assert diffs, "no parameter received a gradient"
    return max(diffs)


@pytest.mark.parametrize(
    "name,dtype",
    [
        pytest.param(
            n,
            d,
            id=f"{n}-{i}",
            marks=[pytest.mark.slow] if n in V2_LIKE_ATTO or (i == "fp64" and n not in FP64_FAST) else [],
        )
        for n in FAMILIES
        for d, i in ((torch.float32, "fp32"), (torch.float64, "fp64"))
    ],
)
def test_visible_equals_masked(name, dtype):
    tol = TOL[dtype]
    a, b = pair(name, dtype=dtype)
    assert list(a.state_dict()) == list(b.state_dict())
    assert sum(isinstance(m, _VisibleBlock) for m in b.modules()) >= 8  # the blocks really run packed
    for ratio, hw in CASES:  # one model pair for all cases: building models dominates the test time
        x, mask = case_inputs(ratio, hw, dtype)
        a.zero_grad(), b.zero_grad()
        ya, yb, ga, gb = run_both(a, b, x, mask)
        assert (ya - yb).abs().max() < tol["out"] * max(1.0, ya.abs().max().item()), ratio
        assert (yb * mask.unsqueeze(1)).abs().max() == 0  # masked cells exactly zero
        assert (ga - gb).abs().max() <= tol["grad_rel"] * ga.abs().max(), ratio
        assert max_grad_diff(a, b, relative=True) < tol["grad_rel"], ratio
        for (n, s), t in zip(a.named_buffers(), b.buffers()):  # BatchNorm running statistics
            torch.testing.assert_close(s, t, rtol=tol["buf"], atol=tol["buf"], msg=n)
    if dtype != torch.float32:
        return
    # to_dense(): a plain timm model with the same weights, loading strictly into timm's
    dense = b.to_dense().eval()
    assert not any(isinstance(m, _Sparse) for m in dense.modules())
    assert type(dense) is type(timm.create_model(name))
    timm.create_model(name, num_classes=0).load_state_dict(dense.state_dict(), strict=True)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)
        torch.testing.assert_close(dense.forward_features(x), a.to_dense().eval().forward_features(x))


@pytest.mark.parametrize(
    "name,output_stride",
    [*((n, 32) for n in FAMILIES), ("videomac_cnxv2_iso_s", 16), ("videomac_rn18", 8), ("resnet18", 16)],
)
def test_packed_from_stem_to_last_stage(name, output_stride, monkeypatch):
    """Every conv and pooling layer runs packed (no dense fallback); the only dense->packed gather is
    the input image's and the only packed->dense scatter the output's (the model's forward_features and
    its stages are traced chains of modules)."""
    calls = collections.Counter()
    gather, scatter, plan = visible.gather, visible.scatter, packed.plan

    def counting_gather(ctx, x):
        calls["gather"] += 1
        return gather(ctx, x)

    def counting_scatter(ctx, t, hw):
        calls["scatter"] += 1
        return scatter(ctx, t, hw)

    def counting_plan(m, hw, block, device):
        how = plan(m, hw, block, device)
        calls[how] += 1
        return how

    monkeypatch.setattr(visible, "gather", counting_gather)
    monkeypatch.setattr(visible, "scatter", counting_scatter)
    monkeypatch.setattr(packed, "plan", counting_plan)
    kwargs = {} if output_stride == 32 or "iso" in name else dict(output_stride=output_stride)
    enc = videomac.SparseEncoder(make(name, train=True, **kwargs), backend="visible")
    p = enc.patch_size
    assert p == output_stride
    x, mask = torch.randn(3, 3, 2 * p, 3 * p), RAGGED
    enc(x, mask).sum().backward()
    assert calls["gather"] == 1 and calls["scatter"] == 1 and calls["dense"] == 0, calls
    assert sum(calls.values()) > 5


@pytest.mark.parametrize("name,output_stride", DILATED)
def test_visible_equals_masked_dilated(name, output_stride):
    """Dilated last stages (output_stride 16 / 8), float64: outputs, input and parameter gradients and
    BatchNorm statistics of the visible backend equal the masked reference's, random and ragged masks."""
    tol = TOL[torch.float64]
    a, b = pair(name, dtype=torch.float64, output_stride=output_stride)
    p = output_stride
    masks = [random_mask(2, (64 // p, 96 // p), 0.5, generator=torch.Generator().manual_seed(1)), RAGGED]
    for mask in masks:
        gh, gw = mask.shape[1:]
        x = torch.randn(
            mask.shape[0], 3, gh * p, gw * p, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        a.zero_grad(), b.zero_grad()
        ya, yb, ga, gb = run_both(a, b, x, mask)
        assert ya.shape[-2:] == (gh, gw)
        assert (ya - yb).abs().max() < tol["out"] * max(1.0, ya.abs().max().item())
        assert (yb * mask.unsqueeze(1)).abs().max() == 0
        assert (ga - gb).abs().max() <= tol["grad_rel"] * ga.abs().max()
        assert max_grad_diff(a, b, relative=True) < tol["grad_rel"]
        for (n, s), t in zip(a.named_buffers(), b.buffers()):
            torch.testing.assert_close(s, t, rtol=tol["buf"], atol=tol["buf"], msg=n)


def test_handover_needs_the_same_unmodified_tensor():
    ctx = videomac.sparse.masked.MaskContext()
    ctx.set(RAGGED)
    t = torch.randn(visible.layout(ctx, (4, 6), torch.device("cpu")).n, 5)
    d = visible._publish(ctx, visible._State(t, (4, 6), True))
    assert visible._received(ctx, d).t is t
    assert not visible._received(ctx, d.clone()).packed  # another tensor with the same values
    d.add_(1.0)  # changed in place by code that is not visible-aware: the packed tokens are stale
    assert not visible._received(ctx, d).packed


def test_forward_hooks_on_blocks_fire():
    """A block with a forward hook inside a Sequential is called as a module (its hook runs)."""
    a, b = pair("videomac_cnxv2_atto")
    seen = []
    b.model.stages[1].blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x, mask = case_inputs(0.5, (64, 96))
    ya, yb, _, _ = run_both(a, b, x, mask)
    assert seen == [(2, 80, 8, 12)]
    assert (ya - yb).abs().max() < 1e-4
    # An Identity in a chain (stage 0's downsample) with a hook is called too; without one it is skipped.
    a, b = pair("videomac_cnxv2_atto")
    b.model.stages[0].downsample.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    ya, yb, _, _ = run_both(a, b, x, mask)
    assert seen[1:] == [(2, 40, 16, 24)]
    assert (ya - yb).abs().max() < 1e-4


def test_pointwise_layers_by_type_table():
    """Which layers run on packed tokens is a table of dense classes (exact: a subclass may compute
    something else), 1x1 convs only; layers found by what they are (DropPath, zero-preserving) by base."""
    from timm.layers import DropPath

    op = visible._pointwise_op
    assert op(nn.Linear(4, 4)) is visible._linear
    assert op(nn.Conv2d(4, 8, 1)) is visible._conv1x1
    assert op(nn.Conv2d(4, 8, 3, padding=1)) is None and op(nn.Conv2d(4, 8, 1, stride=2)) is None
    assert op(type("MyLinear", (nn.Linear,), {})(4, 4)) is None
    assert op(DropPath(0.1)) is visible._drop_path and op(nn.GELU()) is visible._elementwise
    assert op(nn.MaxPool2d(2)) is None and op(nn.AvgPool2d(2)) is None


def saved_activation_bytes(enc, x, mask):
    """Bytes of the distinct storages autograd saves for backward in one forward pass, parameters aside."""
    params = {p.untyped_storage().data_ptr() for p in enc.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x, mask)
    return sum(storages.values())


@pytest.mark.parametrize("name", ["videomac_rn18", "videomac_cnxv2_atto", "resnet18"])
def test_backward_memory_is_sparse(name):
    """At mask ratio 0.75 the visible backend saves well under 0.4x of what the masked one saves."""
    a, b = pair(name)
    mask = random_mask(4, (7, 7), 0.75, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 224, 224)
    ratio = saved_activation_bytes(b, x, mask) / saved_activation_bytes(a, x, mask)
    assert ratio < 0.4, ratio


def test_batchnorm_statistics_identical():
    a, b = pair("resnet18")
    mask = random_mask(4, (2, 3), 0.5, generator=torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 64, 96)
    for _ in range(2):
        a(x, mask), b(x, mask)
    bns = [(m, n) for m, n in zip(a.modules(), b.modules()) if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20
    for m, n in bns:
        torch.testing.assert_close(m.running_mean, n.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(m.running_var, n.running_var, rtol=0, atol=1e-6)
        assert m.num_batches_tracked == n.num_batches_tracked == 2
    a.eval(), b.eval()
    with torch.no_grad():
        assert (a(x, mask) - b(x, mask)).abs().max() < 1e-4


def test_drop_path_same_draws():
    torch.manual_seed(0)
    a = videomac.SparseEncoder(timm.create_model("videomac_cnxv2_atto", drop_path_rate=0.5), backend="masked")
    b = videomac.SparseEncoder(timm.create_model("videomac_cnxv2_atto", drop_path_rate=0.5), backend="visible")
    b.load_state_dict(a.state_dict())
    mask = random_mask(4, (2, 3), 0.5, generator=torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 64, 96)
    torch.manual_seed(7)
    ya = a.train()(x, mask)
    torch.manual_seed(7)
    yb = b.train()(x, mask)
    assert (ya - yb).abs().max() < 1e-4


@pytest.mark.parametrize("uniform", [True, False])
def test_grn_per_sample_over_visible(uniform):
    """Packed GRN == dense GRN of each sample alone, on its visible positions (padding zeros)."""
    grn = timm.layers.grn.GlobalResponseNorm(8)
    with torch.no_grad():
        grn.weight.normal_(), grn.bias.normal_()
    if uniform:
        mask = random_mask(3, (2, 3), 0.5, generator=torch.Generator().manual_seed(4))
    else:
        mask = torch.tensor([[[0, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 1]], [[1, 1, 1], [1, 1, 1]]]).bool()
    ctx = videomac.sparse.masked.MaskContext()
    ctx.set(mask)
    lay = _index(ctx, (4, 6), torch.device("cpu"))
    assert (lay.valid is None) == uniform
    dense = torch.randn(3, 4, 6, 8) * ~videomac.masking.upsample_mask(mask, (4, 6)).unsqueeze(-1)
    t = dense.reshape(-1, 8)[lay.idx]
    if not uniform:  # padding rows hold anything: they must not count
        t = torch.where(lay.valid, t, torch.full_like(t, 1e3))
    t.requires_grad_()
    out = _grn(grn, t, lay)
    ref = torch.cat([grn(dense[i : i + 1]).reshape(-1, 8) for i in range(3)])[lay.idx]
    ok = slice(None) if uniform else lay.valid.view(-1)
    torch.testing.assert_close(out[ok], ref[ok])
    out.square().sum().backward()  # an all-masked sample must not produce NaN gradients
    assert torch.isfinite(t.grad).all() and torch.isfinite(grn.weight.grad).all()


def test_nothing_visible_is_finite():
    """A mask with no visible cell (e.g. ratio 0.9 on a 2x3 grid) gives zeros, not NaNs."""
    for name in ("videomac_cnxv2_t", "resnet18"):
        enc = videomac.SparseEncoder(make(name, train=True), backend="visible")
        y = enc(torch.randn(2, 3, 64, 96), torch.ones(2, 2, 3, dtype=torch.bool))
        assert y.abs().max() == 0
        y.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_videomac_visible_equals_masked():
    torch.manual_seed(0)
    a = VideoMAC("videomac_cnxv2_atto", backend="masked", decoder_dim=64)
    b = VideoMAC("videomac_cnxv2_atto", backend="visible", decoder_dim=64)
    b.load_state_dict(a.state_dict())
    f1, f2 = torch.randn(2, 3, 96, 64), torch.randn(2, 3, 96, 64)
    mask = random_mask(2, (3, 2), 0.75, generator=torch.Generator().manual_seed(0))
    la, lb = a(f1, f2, mask)["loss"], b(f1, f2, mask)["loss"]
    la.backward(), lb.backward()
    assert abs(la.item() - lb.item()) < 1e-5
    assert max_grad_diff(a, b) < 1e-4


def test_unknown_backend_is_refused():
    # MinkowskiEngine is the reference the masked backend was checked against (docs/design.md §2), not a backend.
    with pytest.raises(ValueError, match="available: auto, masked, visible"):
        videomac.SparseEncoder(make("videomac_rn18"), backend="minkowski")


@pytest.mark.parametrize("name", ["videomac_cnxv2_atto", "videomac_rn18"])
def test_bf16_autocast_close_to_masked(name):
    """Under bf16 autocast the packed convs run in bf16 as the masked backend's dense ones do."""
    a, b = pair(name)
    x, mask = case_inputs(0.5, (64, 96))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x, mask).float(), b(x, mask).float()
        yb.square().mean().backward()
    assert (ya - yb).abs().max() < 0.05 * ya.abs().max()
    assert all(torch.isfinite(p.grad).all() for p in b.parameters() if p.grad is not None)
