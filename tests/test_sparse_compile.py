"""The visible step traces as one graph: static, sync-free layouts and the packed kernels as custom ops
(torch.library), checked with opcheck; compiled equals eager."""

import inspect

import pytest
import timm
import torch

from videomac.masking import random_mask
from videomac.pretrain.model import VideoMAC
from videomac.sparse import packed
from videomac.sparse.context import MaskContext


def small(name):
    # reduced depth: compiling forward + backward of a full encoder takes minutes on 2 cores
    kw = dict(depths=(1, 1, 1, 1)) if "cnxv2" in name else {}
    return VideoMAC(timm.create_model(name, num_classes=0, **kw), decoder_dim=32, backend="visible")


def inputs(batch=2, hw=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = (hw // 32, hw // 32)
    mask = random_mask(batch, grid, 0.5, generator=g)
    return torch.randn(batch, 3, hw, hw, generator=g), torch.randn(batch, 3, hw, hw, generator=g), mask


def _ctx(mask, keep=None):
    ctx = MaskContext()
    ctx.set(mask, keep)
    return ctx


@pytest.mark.parametrize("keep", [None, 3], ids=["counted", "static"])
def test_opcheck_custom_ops(keep):
    """Every packed kernel passes torch.library.opcheck (schema, fake tensors, autograd registration, AOT)."""
    mask = random_mask(2, (2, 2), 0.25, generator=torch.Generator().manual_seed(0))
    ctx, hw = _ctx(mask, keep), (8, 8)
    lay = packed.layout(ctx, hw, torch.device("cpu"))
    x = torch.randn(lay.n, 6, dtype=torch.float64, requires_grad=True)
    conv = torch.nn.Conv2d(6, 5, 3, stride=2, padding=1).double()
    nbr = packed._neighbours(ctx, hw, packed.conv_geom(conv), torch.device("cpu"))
    torch.library.opcheck(packed.gemm_conv, (x, conv.weight, conv.bias, nbr))
    g = torch.randn(nbr.shape[0], 5, dtype=torch.float64)
    torch.library.opcheck(packed.gemm_conv_backward, (g, x.detach(), conv.weight.detach(), nbr, True, True))
    for groups, c_out in ((1, 4), (6, 6)):  # dense 3x3 and depthwise
        conv = torch.nn.Conv2d(6, c_out, 3, padding=1, groups=groups).double()
        g_ = packed.conv_geom(conv)
        tidx = packed._tile_index(ctx, hw, g_, torch.device("cpu"))
        block, tile = list(lay.block), list(packed._tile_hw(lay.block, g_))
        torch.library.opcheck(packed.tile_conv, (x, conv.weight, conv.bias, tidx, block, tile, groups))
        g = torch.randn(lay.n, c_out, dtype=torch.float64)
        method = "dwfwd" if groups > 1 else ""
        args = (g, x.detach(), conv.weight.detach(), tidx, block, tile, groups, method, True, True)
        torch.library.opcheck(packed.tile_conv_backward, args)


def test_static_keep_is_checked():
    """A wrong keep= is refused on the device (asynchronously on CUDA), never silently used."""
    mask = random_mask(2, (2, 2), 0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="does not keep 3 visible cells"):
        _ctx(mask, 3)
    with pytest.raises(ValueError, match="keep=5"):
        _ctx(mask, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["videomac_cnxv2_atto", "videomac_rn18"])
def test_visible_forward_is_one_graph(name):
    """The whole VideoMAC forward (online and target branches, decoder, losses) is one graph, no break."""
    model = small(name)
    x1, x2, mask = inputs()
    ex = torch._dynamo.explain(model)(x1, x2, mask, 2)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [r.reason for r in ex.break_reasons]
    # a fresh mask is drawn inside the step with its static count: one graph as well
    ex = torch._dynamo.explain(model)(x1, x2)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [r.reason for r in ex.break_reasons]


@pytest.mark.slow
def test_compiled_equals_eager_inductor():
    """fullgraph Inductor forward + backward of the visible step gives the eager loss and gradients."""
    torch._dynamo.reset()
    model = small("videomac_cnxv2_atto")
    x1, x2, mask = inputs()
    eager = model(x1, x2, mask, 2)["loss"]
    eager.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True)(x1, x2, mask, 2)["loss"]
    compiled.backward()
    assert abs(compiled.item() - eager.item()) < 1e-4
    assert ref
    for n, g in ref.items():
        got = dict(model.named_parameters())[n].grad
        assert (got - g).abs().max() <= 1e-3 * max(g.abs().max().item(), 1e-8), n


def test_auto_backend_resolves_per_device(monkeypatch):
    """'auto' is the default and means visible on the CPU, masked on CUDA (docs/performance.md's table);
    an 'auto' encoder gives the masked backend's results on either path."""
    import videomac
    from videomac.sparse import AUTO_BACKEND, resolve_backend

    assert resolve_backend("auto", "cpu") == "visible" and resolve_backend("auto", "cuda") == "masked"
    assert resolve_backend("auto", "meta") == "masked" and resolve_backend("masked", "cpu") == "masked"
    assert AUTO_BACKEND == {"cpu": "visible", "cuda": "masked"}
    with pytest.raises(ValueError, match="unknown sparse backend 'fast'"):
        resolve_backend("fast", "cpu")
    enc = videomac.SparseEncoder(timm.create_model("videomac_cnxv2_atto", depths=(1, 1, 1, 1)))
    assert enc.backend == "auto" and inspect.signature(VideoMAC).parameters["backend"].default == "auto"
    ref = videomac.SparseEncoder(timm.create_model("videomac_cnxv2_atto", depths=(1, 1, 1, 1)), backend="masked")
    ref.load_state_dict(enc.state_dict())
    x, _, mask = inputs()
    want = ref(x, mask)
    torch.testing.assert_close(enc(x, mask), want, atol=1e-5, rtol=1e-4)
    assert enc.ctx.packed  # resolved to visible on the CPU
    monkeypatch.setitem(AUTO_BACKEND, "cpu", "masked")  # what a CUDA device gets
    torch.testing.assert_close(enc(x, mask), want, atol=1e-5, rtol=1e-4)
    assert not enc.ctx.packed
