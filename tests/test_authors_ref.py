"""Self-test of tests/authors_ref.py (the independent reference of the authors' released code)."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import authors_ref as ar  # noqa: E402

ATTO = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
TINY = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48))


# ---------------------------------------------------------------- layout


def test_checkpoint_layout_v2_atto():
    ck = ar.make_authors_convnext_state(2, **ATTO)
    assert set(ck) == {
        "model_online",
        "model_target",
        "online_without_ddp",
        "target_without_ddp",
        "optimizer",
        "epoch",
        "scaler",
        "args",
    }
    sd = ck["online_without_ddp"]
    assert list(sd)[0] == "mask_token" and sd["mask_token"].shape == (1, 512, 1, 1)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["encoder.downsample_layers.0.0.weight"] == (40, 3, 4, 4)
    assert shapes["encoder.downsample_layers.0.1.weight"] == (40,)
    assert shapes["encoder.downsample_layers.1.0.ln.weight"] == (40,)
    assert shapes["encoder.downsample_layers.1.1.kernel"] == (4, 40, 80)
    assert shapes["encoder.downsample_layers.3.1.bias"] == (1, 320)
    assert shapes["encoder.stages.0.0.dwconv.kernel"] == (49, 40)
    assert shapes["encoder.stages.0.0.dwconv.bias"] == (1, 40)
    assert shapes["encoder.stages.2.5.pwconv1.linear.weight"] == (640, 160)
    assert shapes["encoder.stages.2.5.grn.gamma"] == (1, 640)
    assert shapes["encoder.norm3.ln.weight"] == (320,)
    assert shapes["proj.weight"] == (512, 320, 1, 1)
    assert shapes["decoder.0.grn.gamma"] == (1, 1, 1, 2048)
    assert shapes["pred.weight"] == (3072, 512, 1, 1)
    assert not any(k.startswith("encoder.head") for k in sd)
    # block registration order: grn after pwconv2 in the encoder, before it in the decoder
    keys = list(sd)
    assert keys.index("encoder.stages.0.0.grn.gamma") > keys.index("encoder.stages.0.0.pwconv2.linear.bias")
    assert keys.index("decoder.0.grn.gamma") < keys.index("decoder.0.pwconv2.weight")
    assert ck["model_online"] is not ck["target_without_ddp"]
    assert not torch.equal(sd["encoder.norm3.ln.weight"], ck["target_without_ddp"]["encoder.norm3.ln.weight"])
    ln = sd["encoder.norm0.ln.weight"]
    assert 0.7 < ln.min() and ln.max() < 1.3 and ln.std() > 0.02
    # their optimizer groups index the parameters in state_dict order
    groups = ck["optimizer"]["param_groups"]
    assert sorted(groups[0]["params"] + groups[1]["params"]) == list(range(len(sd)))


def test_checkpoint_layout_v1_and_ddp():
    ck = ar.make_authors_convnext_state(1, **TINY, ddp=True)
    sd = ck["online_without_ddp"]
    assert not any(".grn." in k for k in sd if k.startswith("encoder."))
    assert not any(k.endswith(".gamma") for k in sd if k.startswith("encoder."))  # no layer scale
    assert all(k.startswith("module.") for k in ck["model_online"])
    assert not any(k.startswith("module.") for k in ck["model_target"])


def test_isotropic_layout_and_param_count():
    entries = ar.authors_encoder_entries(2, 18, 384, isotropic=True)
    n = sum(math.prod(s) for _, s, _ in entries)
    assert n == 21_979_008  # paper: 22M
    shapes = dict((k, s) for k, s, _ in entries)
    assert shapes["stem.weight"] == (384, 3, 16, 16)
    assert shapes["norm.ln.weight"] == (384,)
    ck = ar.make_authors_convnext_state(2, 2, 32, isotropic=True, decoder_dim=64)
    assert ck["online_without_ddp"]["pred.weight"].shape == (768, 64, 1, 1)
    assert ck["args"].model == "custom" and ck["args"].patch_size == 16


# ---------------------------------------------------------------- kernels


def _me_conv_literal(feat, kernel, bias, k, stride):
    """MinkowskiEngine conv on a full (all-active) 2-D grid, literally: for each output coordinate
    o (multiples of stride) and kernel index i, offset per axis d (axis 0 fastest: i % k, then i // k),
    odd k centred, even k 0..k-1; out[o] += in[o + off] @ kernel[i] (kernel_region.hpp)."""
    c_in, h, w = feat.shape
    depthwise = kernel.ndim == 2
    c_out = kernel.shape[1] if depthwise else kernel.shape[2]
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    out = torch.zeros(c_out, ho, wo, dtype=torch.float64)
    for oy in range(ho):
        for ox in range(wo):
            for i in range(k * k):
                d0, d1 = i % k, (i // k) % k
                if k % 2:
                    d0, d1 = d0 - k // 2, d1 - k // 2
                y, x = oy * stride + d0, ox * stride + d1
                if 0 <= y < h and 0 <= x < w:
                    v = feat[:, y, x]
                    out[:, oy, ox] += v * kernel[i] if depthwise else v @ kernel[i]
    return out + bias.reshape(-1, 1, 1)


@pytest.mark.parametrize("k,stride,depthwise", [(3, 1, False), (2, 2, False), (7, 1, True)])
def test_me_kernel_to_dense_matches_kernel_region_order(k, stride, depthwise):
    g = torch.Generator().manual_seed(k)
    cin, cout = 3, (3 if depthwise else 4)
    feat = torch.randn(cin, 8, 8, generator=g, dtype=torch.float64)
    kernel = torch.randn((k * k, cin) if depthwise else (k * k, cin, cout), generator=g, dtype=torch.float64)
    bias = torch.randn(1, cout, generator=g, dtype=torch.float64)
    ref = _me_conv_literal(feat, kernel, bias, k, stride)
    w = ar.me_kernel_to_dense(kernel)
    pad = k // 2 if k % 2 else 0
    dense = torch.nn.functional.conv2d(
        feat[None], w, bias.reshape(-1), stride=stride, padding=pad, groups=cin if depthwise else 1
    )[0]
    assert torch.allclose(dense, ref, atol=1e-10)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("version", [2, 1])
def test_forward_shape(version):
    ck = ar.make_authors_convnext_state(version, **ATTO)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y, stages = ar.authors_convnext_forward(ck, x, version, return_stages=True, **ATTO)
    assert y.shape == (1, 320, 2, 2)
    assert [s.shape[1:] for s in stages] == [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]
    assert torch.isfinite(y).all() and y.std() > 0.1


def _timm_with_stage_norms(version, depths, dims, conv_mlp, ck):
    pytest.importorskip("timm")
    from timm.models.convnext import ConvNeXt

    model = ConvNeXt(
        depths=depths, dims=dims, num_classes=0, ls_init_value=None, use_grn=version == 2, conv_mlp=conv_mlp
    ).eval()
    sd, norms = ar.authors_encoder_to_timm(ck, version, depths, conv_mlp=conv_mlp)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"head.norm.weight", "head.norm.bias"}

    def run(x):
        x = model.stem(x)
        for i, stage in enumerate(model.stages):
            x = stage(x)
            x = torch.nn.functional.layer_norm(
                x.permute(0, 2, 3, 1), (x.shape[1],), norms[f"norm{i}.weight"], norms[f"norm{i}.bias"], 1e-6
            ).permute(0, 3, 1, 2)
        return x

    return run


@pytest.mark.parametrize("version,conv_mlp", [(2, True), (2, False), (1, False)])
def test_forward_equals_timm_convnext_plus_stage_norms(version, conv_mlp):
    ck = ar.make_authors_convnext_state(version, **TINY, seed=3)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    ref = _timm_with_stage_norms(version, TINY["depths"], TINY["dims"], conv_mlp, ck)
    with torch.no_grad():
        a = ar.authors_convnext_forward(ck, x, version, **TINY)
        b = ref(x)
    assert a.shape == b.shape == (1, 48, 2, 3)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_masked_forward_sparse_semantics():
    ck = ar.make_authors_convnext_state(2, **TINY, seed=5)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 96, 96, generator=g)
    mask = torch.zeros(1, 9)
    mask[0, [0, 4, 8, 5]] = 1  # (B, L), 1 = removed, 3x3 grid
    y = ar.authors_convnext_forward(ck, x, 2, mask=mask, **TINY)
    m = mask.reshape(1, 1, 3, 3).bool()
    assert (y.masked_select(m.expand_as(y)) == 0).all()
    x2 = x.clone()
    x2[:, :, 0:32, 0:32] += 5 * torch.randn(1, 3, 32, 32, generator=g)  # patch 0 is masked
    y2 = ar.authors_convnext_forward(ck, x2, 2, mask=mask, **TINY)
    assert torch.allclose(y, y2, atol=1e-5)
    # nothing masked == no mask
    y0 = ar.authors_convnext_forward(ck, x, 2, mask=torch.zeros(1, 9), **TINY)
    assert torch.allclose(y0, ar.authors_convnext_forward(ck, x, 2, **TINY), atol=1e-6)


def test_grn_pools_over_the_whole_batch():
    ck = ar.make_authors_convnext_state(2, **TINY, seed=7)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=g)
    both = ar.authors_convnext_forward(ck, x, 2, **TINY)
    alone = ar.authors_convnext_forward(ck, x[:1], 2, **TINY)
    assert not torch.allclose(both[:1], alone, atol=1e-4)  # batch-global GRN (their MinkowskiGRN)
    ck1 = ar.make_authors_convnext_state(1, **TINY, seed=7)  # V1 has no GRN: batch-independent
    assert torch.allclose(
        ar.authors_convnext_forward(ck1, x, 1, **TINY)[:1],
        ar.authors_convnext_forward(ck1, x[:1], 1, **TINY),
        atol=1e-5,
    )


def test_isotropic_forward():
    ck = ar.make_authors_convnext_state(2, 2, 32, isotropic=True, decoder_dim=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    y = ar.authors_convnext_forward(ck, x, 2, 2, 32, isotropic=True)
    assert y.shape == (1, 32, 4, 4)
    mask = torch.zeros(1, 16)
    mask[0, :12] = 1
    ym = ar.authors_convnext_forward(ck, x, 2, 2, 32, isotropic=True, mask=mask)
    assert (ym.reshape(1, 32, 16)[:, :, :12] == 0).all() and ym.abs().sum() > 0


# ---------------------------------------------------------------- schedules, data, losses


def test_momentum_schedule_indexed_within_epoch():
    sched = ar.authors_momentum_schedule(0.996, 1.0, 100, 176)
    assert len(sched) == 17_600
    assert sched[0] == pytest.approx(0.996)
    assert sched[8_800] == pytest.approx(0.998)
    assert sched[-1] < 1.0 and sched[-1] > 0.99999
    for epoch in (0, 50, 99):
        assert ar.authors_momentum_at(sched, epoch, 0) == pytest.approx(0.996)
        assert ar.authors_momentum_at(sched, epoch, 175) == sched[175]
    assert max(ar.authors_momentum_at(sched, 99, s) for s in range(176)) < 0.996002


def test_lr_schedule():
    lr = ar.authors_lr(1e-3, 512)
    assert lr == pytest.approx(2e-3)
    assert ar.authors_lr_at(0.0, lr, 100, 10) == 0.0
    assert ar.authors_lr_at(5.0, lr, 100, 10) == pytest.approx(1e-3)
    assert ar.authors_lr_at(10.0, lr, 100, 10) == pytest.approx(2e-3)
    assert ar.authors_lr_at(55.0, lr, 100, 10) == pytest.approx(1e-3)
    warm = ar.authors_cosine_scheduler(1.0, 0.0, 2, 3, warmup_epochs=1)
    assert list(warm[:3]) == [0.0, 0.5, 1.0]


def test_pairs():
    assert ar.authors_pairs([3, 1, 0, 4]) == [(0, 0), (0, 1), (3, 0), (3, 1), (3, 2)]
    assert ar.authors_pairs([3, 1, 0, 4], gap=2) == [(0, 0), (3, 0), (3, 1)]
    assert len(ar.authors_pairs([5] * 10)) == 40


def test_mask_patchify_and_losses():
    g = torch.Generator().manual_seed(5)
    mask = ar.authors_random_mask(torch.randn(4, 49, generator=g), 0.75)
    assert (mask.sum(1) == 37).all()  # int(49 * 0.25) = 12 kept
    imgs = torch.randn(2, 3, 64, 64, generator=g)
    patches = ar.authors_patchify(imgs, 32)
    assert patches.shape == (2, 4, 3072)
    # value k of patch (gy, gx) = pixel (row, col, channel) with k = (row * 32 + col) * 3 + channel
    assert patches[1, 3, (5 * 32 + 7) * 3 + 2] == imgs[1, 2, 32 + 5, 32 + 7]
    pred = torch.randn(2, 3072, 2, 2, generator=g)
    m = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 1]])
    t = patches
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=True, keepdim=True) + 1e-6).sqrt()
    per = ((pred.reshape(2, 3072, 4).transpose(1, 2) - t) ** 2).mean(-1)
    assert ar.authors_forward_loss(imgs, pred, m, 32) == pytest.approx(float((per * m).sum() / m.sum()), rel=1e-5)
    assert ar.authors_cons_loss(pred, m, pred) == 0


def test_weight_decay_split_and_init_rules():
    ck = ar.make_authors_convnext_state(2, **ATTO)
    sd = ck["online_without_ddp"]
    no_decay, decay = ar.authors_weight_decay_split((k, v.shape) for k, v in sd.items())
    assert "mask_token" in decay
    assert "encoder.stages.0.0.grn.gamma" in decay and "decoder.0.grn.beta" in decay
    assert "encoder.stages.0.0.dwconv.kernel" in decay
    assert "encoder.stages.0.0.dwconv.bias" in no_decay  # (1, C) but ends with .bias
    assert "encoder.norm0.ln.weight" in no_decay and "decoder.0.norm.weight" in no_decay
    r = ar.authors_init_rule
    assert r("encoder.downsample_layers.1.1.kernel") == ("trunc_normal", 0.02, -2.0, 2.0)
    assert r("encoder.stages.0.0.dwconv.kernel")[1] == 1.0
    assert r("encoder.stages.0.0.pwconv1.linear.weight")[1] == 1.0
    assert r("encoder.downsample_layers.0.0.weight")[1] == 1.0
    assert r("encoder.downsample_layers.0.0.bias") == ("const", 0.0)
    assert r("encoder.downsample_layers.0.0.bias", mode="resnet") == ("torch_default",)
    assert r("pred.weight")[1] == 1.0 and r("decoder.0.dwconv.weight")[1] == 1.0
    assert r("decoder.0.pwconv1.weight") == ("torch_default",)
    assert r("mask_token") == ("normal", 0.02)
    assert r("encoder.stages.0.0.grn.gamma") == ("const", 0.0)
    assert r("encoder.norm2.ln.weight") == ("const", 1.0)
