"""Sparse execution proofs (docs/design.md §2): (a) unmasked == dense, (b) no leak from masked pixels,
(c) masked cells exactly zero after every layer, (d) strict load of to_dense(), (e) gradients."""

import pytest
import timm
import torch
import torch.nn as nn

import videomac
from videomac.masking import random_mask, upsample_mask
from videomac.sparse.context import SparseLayer as _Sparse

# Every family at small sizes; timm's resnet18 covers BatchNorm + max-pool; cnxv2_t covers the
# channels-last Linear/LayerNorm MLP path, atto the conv-MLP path.
FAMILIES = ["videomac_rn18", "videomac_rn50", "videomac_cnxv2_atto", "videomac_cnxv2_t", "videomac_cnxv1_t", "resnet18"]
SIZES = [(64, 96), (96, 64)]


def make(name, train=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=0, **kwargs)
    # Non-trivial norm/GRN parameters so the checks are not passed by zero-initialised layers.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "grn" in n or "gamma" in n or n.endswith(("norm1.weight", "norm2.weight", "norm3.weight")):
                p.normal_(0.5, 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.train(train)


def stage_outputs(enc_or_model, x, mask=None):
    model = enc_or_model.model if isinstance(enc_or_model, videomac.SparseEncoder) else enc_or_model
    outs = []
    names = [f["module"] for f in model.feature_info]
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o: outs.append(o)) for n in names]
    try:
        final = enc_or_model(x, mask) if mask is not None else enc_or_model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return outs + [final]


@pytest.mark.parametrize("backend", ["masked", "visible"])
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("hw", SIZES)
def test_a_unmasked_equals_dense(name, hw, backend):
    dense = make(name)
    enc = videomac.SparseEncoder(make(name), backend=backend)
    x = torch.randn(3, 3, *hw)
    mask = torch.zeros(3, hw[0] // 32, hw[1] // 32, dtype=torch.bool)
    with torch.no_grad():
        diffs = [(a - b).abs().max().item() for a, b in zip(stage_outputs(enc, x, mask), stage_outputs(dense, x))]
    assert max(diffs) < 1e-4, diffs


def test_a_unmasked_equals_dense_batchnorm_training():
    dense, enc = make("resnet18", train=True), videomac.SparseEncoder(make("resnet18", train=True))
    x = torch.randn(4, 3, 64, 96)
    out = enc(x, torch.zeros(4, 2, 3, dtype=torch.bool))
    assert (out - dense.forward_features(x)).abs().max() < 1e-4
    bn_s, bn_d = enc.model.bn1, dense.bn1
    torch.testing.assert_close(bn_s.running_mean, bn_d.running_mean)
    torch.testing.assert_close(bn_s.running_var, bn_d.running_var)


@pytest.mark.parametrize("backend", ["masked", "visible"])
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("train", [False, True])
def test_b_masked_pixels_do_not_leak(name, hw, train, backend):
    enc = videomac.SparseEncoder(make(name, train=train), backend=backend)
    gh, gw = hw[0] // 32, hw[1] // 32
    mask = random_mask(3, (gh, gw), 0.5, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 3, *hw)
    x2 = torch.where(upsample_mask(mask, hw).unsqueeze(1), torch.randn_like(x) * 5, x)
    assert not torch.equal(x, x2)
    with torch.no_grad():
        a = stage_outputs(enc, x, mask)
        b = stage_outputs(enc, x2, mask)
    for fa, fb in zip(a, b):
        visible = ~upsample_mask(mask, fa.shape[-2:]).unsqueeze(1)
        assert ((fa - fb).abs() * visible).max() < 1e-5
        assert (fa * visible).abs().max() > 0  # visible outputs are not trivially zero
        assert (fa * ~visible).abs().max() == 0  # and every stage's masked cells are exactly zero


@pytest.mark.parametrize("name", FAMILIES)
def test_c_masked_cells_zero_after_every_layer(name):
    # layer by layer on the masked backend (every layer a module call); the visible backend equals it
    # (tests/test_sparse_visible.py) and its stage outputs are checked in test_b
    enc = videomac.SparseEncoder(make(name, train=True), backend="masked")
    hw = (64, 96)
    mask = random_mask(3, (2, 3), 0.5, generator=torch.Generator().manual_seed(2))
    checked = []

    def check(module, inputs, out):
        channels_last = out.shape[-1] == getattr(module, "normalized_shape", (None,))[0] or (
            isinstance(module, nn.Linear) or getattr(module, "channel_dim", 1) == -1
        )
        hw_out = out.shape[1:3] if channels_last else out.shape[-2:]
        m = upsample_mask(mask, hw_out)
        m = m.unsqueeze(-1) if channels_last else m.unsqueeze(1)
        assert (out * m).abs().max() == 0, type(module).__name__
        checked.append(module)

    hooks = [m.register_forward_hook(check) for m in enc.model.modules() if isinstance(m, _Sparse)]
    out = enc(torch.randn(3, 3, *hw), mask)
    for h in hooks:
        h.remove()
    assert len(checked) > 10
    assert (out * upsample_mask(mask, out.shape[-2:]).unsqueeze(1)).abs().max() == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_d_to_dense_strict_load(name):
    enc = videomac.SparseEncoder(make(name))
    dense = enc.to_dense()
    assert not any(isinstance(m, _Sparse) for m in dense.modules())
    assert type(dense) is type(timm.create_model(name))
    ref = timm.create_model(name, num_classes=0)
    ref.load_state_dict(dense.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref.eval().forward_features(x), dense.eval().forward_features(x))
    # keys are the dense model's, under `model.`
    assert {f"model.{k}" for k in dense.state_dict()} == set(enc.state_dict())
    # the sparse encoder still works after to_dense()
    assert enc(x, torch.zeros(2, 2, 2, dtype=torch.bool)).shape[-2:] == (2, 2)


@pytest.mark.parametrize("backend", ["masked", "visible"])
@pytest.mark.parametrize("name", FAMILIES)
def test_e_gradients_only_through_visible(name, backend):
    enc = videomac.SparseEncoder(make(name, train=True), backend=backend)
    mask = random_mask(2, (2, 3), 0.5, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    enc(x, mask).square().sum().backward()
    pix_mask = upsample_mask(mask, (64, 96)).unsqueeze(1).expand_as(x)
    assert x.grad[pix_mask].abs().max() == 0
    assert x.grad[~pix_mask].abs().max() > 0
    # parameter gradients do not depend on masked pixels
    grads1 = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    enc.zero_grad()
    x2 = torch.where(pix_mask, torch.randn_like(x) * 3, x.detach())
    torch.manual_seed(0)
    enc(x2, mask).square().sum().backward()
    grads2 = [p.grad for p in enc.parameters() if p.grad is not None]
    for g1, g2 in zip(grads1, grads2):
        assert (g1 - g2).abs().max() <= 1e-5 * max(1.0, g1.abs().max().item())


def test_per_sample_masks_differ():
    enc = videomac.SparseEncoder(make("videomac_cnxv2_atto"))
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, 1, 2] = True
    out = enc(torch.randn(2, 3, 64, 96), mask)
    assert out[0, :, 0, 0].abs().max() == 0 and out[1, :, 0, 0].abs().max() > 0
    assert out[1, :, 1, 2].abs().max() == 0 and out[0, :, 1, 2].abs().max() > 0


def test_issue_snippet():
    model = timm.create_model("videomac_cnxv2_atto")
    enc = videomac.SparseEncoder(model)
    mask = random_mask(2, (7, 7), 0.75)
    feats = enc(torch.randn(2, 3, 224, 224), mask)
    assert feats.shape == (2, 320, 7, 7)
    assert (feats.abs().sum(1) == 0).eq(mask).all()
    dense = enc.to_dense()
    assert dense.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 320, 7, 7)


def test_unsupported_layer_names_module_path():
    model = timm.create_model("videomac_cnxv2_atto")
    model.stages[1].blocks[0].mlp.act = nn.Sigmoid()  # sigmoid(0) != 0: cannot stay sparse
    with pytest.raises(TypeError, match=r"stages\.1\.blocks\.0\.mlp\.act"):
        videomac.SparseEncoder(model)
    model = timm.create_model("videomac_rn18")
    model.layer2 = nn.Sequential(model.layer2, nn.Upsample(scale_factor=1))
    with pytest.raises(TypeError, match=r"layer2\.1' .*Upsample"):
        videomac.SparseEncoder(model)


def test_bad_inputs():
    enc = videomac.SparseEncoder(timm.create_model("videomac_cnxv2_atto"))
    with pytest.raises(ValueError, match="multiple of the patch size 32"):
        enc(torch.randn(1, 3, 60, 64), torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        enc(torch.randn(1, 3, 64, 64), torch.zeros(1, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 channels"):
        enc(torch.randn(1, 4, 64, 64), torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="forward_features"):
        videomac.SparseEncoder(nn.Conv2d(3, 3, 1))


def test_avgpool_and_maxpool_visible_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1))
            self.feature_info = [dict(num_chs=4, reduction=4, module="stem")]
            self.num_features = 4

        def forward_features(self, x):
            return self.stem(x)

    videomac.register_sparse_container(Net)
    net = Net()
    with torch.no_grad():
        net.stem[0].bias.fill_(-1.0)  # negative activations: max with masked zeros would leak
    dense_out = net.forward_features(x := torch.randn(2, 3, 16, 16))
    enc = videomac.SparseEncoder(net)
    torch.testing.assert_close(enc(x, torch.zeros(2, 4, 4, dtype=torch.bool)), dense_out)
    mask = random_mask(2, (4, 4), 0.5)
    x2 = torch.where(upsample_mask(mask, (16, 16)).unsqueeze(1), torch.randn_like(x) + 10, x)
    a, b = enc(x, mask), enc(x2, mask)
    assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize(
    "name,backend",
    [
        ("videomac_rn18", "masked"),
        ("videomac_rn18", "visible"),
        ("videomac_cnxv2_atto", "visible"),
        ("resnet18", "visible"),
    ],
)
def test_model_stays_dense_and_shares_its_weights(name, backend):
    """SparseEncoder(model) leaves ``model`` the dense model it was (same classes, same output bit for bit)
    and shares its weights: an optimizer step through the encoder changes ``model``; to_dense() works."""
    model, x = make(name), torch.randn(2, 3, 64, 96)
    classes = [type(m) for m in model.modules()]
    with torch.no_grad():
        before = model(x)
    enc = videomac.SparseEncoder(model.train(), backend=backend)
    assert [type(m) for m in model.modules()] == classes
    assert all(p is q for p, q in zip(model.parameters(), enc.model.parameters()))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)
        model.train()(x)  # train mode too (BatchNorm statistics of resnet18): no "no mask set"
    mask = random_mask(2, (2, 3), 0.5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    enc.train()(x, mask).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = model.eval()(x)
        assert not torch.equal(after, before)
        assert torch.equal(enc.to_dense().eval()(x), after)
        # a second encoder of the same model: the same weights, run sparsely
        assert torch.equal(videomac.SparseEncoder(model, backend=backend).eval()(x, mask), enc.eval()(x, mask))


# output_stride 16 / 8: the last stages dilated (smp's DeepLab); the mask grid is then the output stride
DILATED = [
    ("videomac_rn18", 16),
    ("videomac_rn18", 8),
    ("videomac_rn50", 8),
    ("resnet18", 16),
    ("videomac_cnxv2_atto", 16),
]


@pytest.mark.parametrize("name,output_stride", DILATED)
def test_dilated_obligations(name, output_stride):
    """Dilated models, both backends: (a) nothing masked == dense (the masked backend bit for bit),
    (b) masked pixels never change visible outputs, (c) masked cells exactly zero at every stage,
    (d) to_dense() loads strictly into timm's model of the same output_stride."""
    dense, hw = make(name, output_stride=output_stride), (64, 96)
    grid = (hw[0] // output_stride, hw[1] // output_stride)
    encs = [videomac.SparseEncoder(make(name, output_stride=output_stride), backend=b) for b in ("masked", "visible")]
    assert [e.patch_size for e in encs] == [output_stride] * 2
    x = torch.randn(2, 3, *hw)
    mask = random_mask(2, grid, 0.5, generator=torch.Generator().manual_seed(1))
    x2 = torch.where(upsample_mask(mask, hw).unsqueeze(1), torch.randn_like(x) * 5, x)
    with torch.no_grad():
        want = stage_outputs(dense, x)
        for enc, tol in zip(encs, (0.0, 1e-4)):
            got = stage_outputs(enc, x, torch.zeros(2, *grid, dtype=torch.bool))
            assert max((a - b).abs().max().item() for a, b in zip(got, want)) <= tol
            for fa, fb in zip(stage_outputs(enc, x, mask), stage_outputs(enc, x2, mask)):
                visible = ~upsample_mask(mask, fa.shape[-2:]).unsqueeze(1)
                assert ((fa - fb).abs() * visible).max() < 1e-5
                assert (fa * visible).abs().max() > 0 and (fa * ~visible).abs().max() == 0
    ref = timm.create_model(name, num_classes=0, output_stride=output_stride)
    ref.load_state_dict(encs[1].to_dense().state_dict(), strict=True)
