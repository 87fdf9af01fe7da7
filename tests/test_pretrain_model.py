"""The VideoMAC pretrainer's rules (docs/design.md §1), each proved on real tensors."""

import math

import pytest
import timm
import torch

from videomac.masking import patchify, random_mask
from videomac.pretrain.model import VideoMAC, masked_mse, patch_targets
from videomac.pretrain.schedule import ema_momentum, learning_rate, param_groups

HW = (64, 96)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoMAC("videomac_cnxv2_atto", decoder_dim=64)


def frames(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *HW, generator=g), torch.randn(b, 3, *HW, generator=g)


def test_target_starts_as_exact_copy(model):
    so, st = model.online.state_dict(), model.target.state_dict()
    assert so.keys() == st.keys()
    assert all(torch.equal(so[k], st[k]) for k in so)
    assert all(not p.requires_grad for p in model.target.parameters())


def test_outputs_and_loss_composition():
    torch.manual_seed(1)
    m = VideoMAC("videomac_rn18", decoder_dim=64, gamma=0.5)
    f1, f2 = frames()
    out = m(f1, f2)
    assert out["pred_online"].shape == (2, 6, 32 * 32 * 3) == out["pred_target"].shape
    assert out["mask"].shape == (2, 2, 3) and out["mask"].dtype == torch.bool
    assert ((~out["mask"]).flatten(1).sum(1) == int(6 * 0.25)).all()
    expected = out["loss_online"] + out["loss_target"] + 0.5 * out["loss_consistency"]
    torch.testing.assert_close(out["loss"], expected)
    # the parts are the masked MSEs against their own targets
    mask = out["mask"]
    torch.testing.assert_close(out["loss_online"], masked_mse(out["pred_online"], patch_targets(f1, 32, True), mask))
    torch.testing.assert_close(out["loss_target"], masked_mse(out["pred_target"], patch_targets(f2, 32, True), mask))
    torch.testing.assert_close(out["loss_consistency"], masked_mse(out["pred_online"], out["pred_target"], mask))


def test_symmetric_mask_shared_by_both_frames(model):
    f1, f2 = frames()
    mask = random_mask(2, (2, 3), 0.5)
    out = model(f1, f2, mask=mask)
    assert torch.equal(out["mask"], mask)
    # the target branch saw the same mask: its prediction equals running it directly with that mask
    with torch.no_grad():
        torch.testing.assert_close(out["pred_target"], model.target(f2, mask))


def test_update_target_is_ema():
    torch.manual_seed(2)
    m = VideoMAC("videomac_cnxv2_atto", decoder_dim=32)
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in m.target.state_dict().items()}
    online = m.online.state_dict()
    m.update_target(0.9)
    for k, v in m.target.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online[k])


def test_no_gradient_reaches_target():
    torch.manual_seed(3)
    m = VideoMAC("videomac_cnxv2_atto", decoder_dim=32)
    out = m(*frames())
    out["loss"].backward()
    assert all(p.grad is None for p in m.target.parameters())
    grads = [p.grad for n, p in m.online.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_visible_predictions_do_not_change_losses():
    torch.manual_seed(4)
    pred = torch.randn(2, 6, 30)
    target = torch.randn(2, 6, 30)
    mask = random_mask(2, (2, 3), 0.5)
    a = masked_mse(pred, target, mask)
    pred2 = torch.where(mask.flatten(1)[..., None], pred, torch.randn_like(pred) * 100)
    torch.testing.assert_close(masked_mse(pred2, target, mask), a)
    # and the value is the mean over masked patches of the per-patch mean
    per = (pred - target).pow(2).mean(-1)[mask.flatten(1)]
    torch.testing.assert_close(a, per.mean())


def test_consistency_zero_when_both_predict_the_same(model):
    f1, _ = frames()
    out = model(f1, f1.clone())  # same frame to both branches with identical weights
    assert out["loss_consistency"].item() < 1e-10
    torch.testing.assert_close(out["loss_online"], out["loss_target"])


def test_norm_pix_targets():
    x = torch.rand(2, 3, 64, 64) * 4 + 2
    t = patch_targets(x, 32, True)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 4), atol=1e-3, rtol=0)
    assert torch.equal(patch_targets(x, 32, False), patchify(x))


def test_motion_head():
    torch.manual_seed(5)
    m = VideoMAC("videomac_cnxv2_atto", decoder_dim=32, motion_weight=0.5)
    f1, f2 = frames()
    out = m(f1, f2)
    assert out["pred_motion"].shape == out["pred_online"].shape
    exp_motion = masked_mse(out["pred_motion"], patchify(f2 - f1), out["mask"])
    torch.testing.assert_close(out["loss_motion"], exp_motion)
    base = out["loss_online"] + out["loss_target"] + out["loss_consistency"]
    torch.testing.assert_close(out["loss"], base + 0.5 * exp_motion)
    out["loss"].backward()
    assert m.motion.pred.weight.grad.abs().sum() > 0
    assert "loss_motion" not in VideoMAC("videomac_cnxv2_atto", decoder_dim=32)(f1, f2)


def test_export_encoder_is_dense_timm_model(model):
    enc = model.export_encoder()
    ref = timm.create_model("videomac_cnxv2_atto")
    ref.load_state_dict(enc.state_dict(), strict=True)
    assert all(p.requires_grad for p in enc.parameters())
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), model.online.encoder(x, mask), atol=1e-4, rtol=0)


def test_bad_inputs(model):
    f1, f2 = frames()
    with pytest.raises(ValueError, match="same shape"):
        model(f1, f2[:, :, :32])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(f1[..., :48], f2[..., :48])
    with pytest.raises(ValueError, match="mask must have shape"):
        model(f1, f2, mask=torch.zeros(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_ratio"):
        VideoMAC("videomac_cnxv2_atto", mask_ratio=1.0)
    with pytest.raises(RuntimeError, match="Unknown model"):
        VideoMAC("videomac_nope")


def test_schedules():
    assert learning_rate(0, 100, 10, 1.0) == 0.0
    assert learning_rate(5, 100, 10, 1.0) == 0.5
    assert learning_rate(10, 100, 10, 1.0) == 1.0
    assert math.isclose(learning_rate(55, 100, 10, 1.0), 0.5)
    assert math.isclose(learning_rate(100, 100, 10, 1.0, min_lr=0.1), 0.1)
    assert ema_momentum(0, 100) == pytest.approx(0.996)
    assert ema_momentum(50, 100) == pytest.approx(0.998)
    assert ema_momentum(100, 100) == pytest.approx(1.0)


def test_weight_decay_groups(model):
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    # the authors' groups (timm's rule on their shapes): the mask token and GRN gamma/beta are decayed
    assert "online.decoder.mask_token" in decay_names
    assert any(n.endswith("grn.weight") for n in decay_names) and any(n.endswith("grn.bias") for n in decay_names)
    assert any(".norm.weight" in n for n in no_decay_names)
    assert all(n.endswith(".weight") or ".grn." in n or n.endswith("mask_token") for n in decay_names)
    assert not any(n.startswith("target.") for n in decay_names | no_decay_names)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_authors_init_rule_is_declared_by_the_family():
    """Each family declares which of the authors' init rules it takes; a model declaring none is refused
    with init='authors' rather than given a rule guessed from its structure."""
    for name, rule in [
        ("videomac_rn18", "resnet"),
        ("videomac_cnxv2_atto", "convnext"),
        ("videomac_cnxv2_iso_s", "convnext"),
    ]:
        with torch.device("meta"):
            assert timm.create_model(name).authors_init == rule, name
    torch.manual_seed(0)
    rn = VideoMAC("videomac_rn18", decoder_dim=32, init="authors").online.encoder.model
    # the ResNet rule: every encoder conv but the stem at std 0.02 (ConvNeXt's puts pointwise convs at 1)
    assert abs(rn.layer1[0].conv1.weight.std().item() - 0.02) < 0.005
    with pytest.raises(ValueError, match="ResNet declares no authors' init rule .*use init='timm'"):
        VideoMAC("resnet18", decoder_dim=32, init="authors")
