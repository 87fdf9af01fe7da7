"""The 'visible' backend (pointwise layers on visible positions only) equals the 'masked' one:
outputs, input and parameter gradients, BatchNorm statistics, per-sample GRN, to_dense()."""

import pytest
import timm
import torch
import torch.nn as nn
from test_sparse import FAMILIES, make

import videomac
from videomac.masking import random_mask
from videomac.models.context import SparseLayer as _Sparse
from videomac.models.visible import _grn, _index, _VisibleBlock
from videomac.pretrain.model import VideoMAC

# (ratio, input size): 0.9 needs a grid of >= 10 cells to keep any visible patch.
CASES = [(0.0, (64, 96)), (0.5, (64, 96)), (0.9, (128, 160))]


def pair(name, train=True):
    return (
        videomac.SparseEncoder(make(name, train=train), backend="masked"),
        videomac.SparseEncoder(make(name, train=train), backend="visible"),
    )


def run_both(a, b, x, mask):
    """Outputs of both encoders and their gradients for the same random linear loss."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa, mask), b(xb, mask)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5))
    (ya * g).mean().backward()
    (yb * g).mean().backward()
    return ya, yb, xa.grad, xb.grad


def max_grad_diff(a, b):
    diffs = [(p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters()) if p.grad is not None]
    assert diffs, "no parameter received a gradient"
    return max(diffs)


@pytest.mark.parametrize("name", FAMILIES)
def test_visible_equals_masked(name):
    a, b = pair(name)
    assert list(a.state_dict()) == list(b.state_dict())
    assert sum(isinstance(m, _VisibleBlock) for m in b.modules()) >= 8  # the blocks really run packed
    for ratio, hw in CASES:  # one model pair for all ratios: building models dominates the test time
        mask = random_mask(2, (hw[0] // 32, hw[1] // 32), ratio, generator=torch.Generator().manual_seed(1))
        assert (~mask).any()
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
        a.zero_grad(), b.zero_grad()
        ya, yb, ga, gb = run_both(a, b, x, mask)
        assert (ya - yb).abs().max() < 1e-4, ratio
        assert (yb * mask.unsqueeze(1)).abs().max() == 0  # masked cells exactly zero
        assert (ga - gb).abs().max() < 1e-4, ratio
        assert max_grad_diff(a, b) < 1e-4, ratio
        for (n, s), t in zip(a.named_buffers(), b.buffers()):  # BatchNorm running statistics
            torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-6, msg=n)
    # to_dense(): a plain timm model with the same weights, loading strictly into timm's
    dense = b.to_dense().eval()
    assert not any(isinstance(m, _Sparse) for m in dense.modules())
    assert type(dense) is type(timm.create_model(name))
    timm.create_model(name, num_classes=0).load_state_dict(dense.state_dict(), strict=True)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)
        torch.testing.assert_close(dense.forward_features(x), a.to_dense().eval().forward_features(x))


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
    ctx = videomac.models.sparse.MaskContext()
    ctx.set(mask)
    info = _index(ctx, (4, 6), torch.device("cpu"))
    assert (info["per_sample"] is not None) == uniform
    dense = torch.randn(3, 4, 6, 8) * ~videomac.masking.upsample_mask(mask, (4, 6)).unsqueeze(-1)
    t = dense.reshape(-1, 8)[info["idx"]].requires_grad_()
    out = _grn(grn, t, info)
    ref = torch.cat([grn(dense[i : i + 1]).reshape(-1, 8) for i in range(3)])[info["idx"]]
    torch.testing.assert_close(out, ref)
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
    # MinkowskiEngine is the reference the masked backend was checked against (DESIGN.md §2), not a backend.
    with pytest.raises(ValueError, match="available: masked, visible"):
        videomac.SparseEncoder(make("videomac_rn18"), backend="minkowski")
