"""Pretraining as the authors' released code does it, each rule compared with an independent
re-implementation written from their code (tests/authors_ref.py)."""

import math
import re

import pytest
import torch
from authors_ref import (
    authors_cons_loss,
    authors_forward_loss,
    authors_init_rule,
    authors_model_entries,
    authors_momentum_at,
    authors_momentum_schedule,
    authors_pairs,
    authors_weight_decay_split,
)

from videomac.presets import PRESETS
from videomac.pretrain.config import resolve_config
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.model import VideoMAC
from videomac.pretrain.schedule import build_optimizer, ema_momentum, param_groups
from videomac.synthetic import render_video, write_frames

ATTO = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))


def to_authors_key(name: str) -> str:
    """Our online parameter name -> the key of the same tensor in the authors' VideoMAC state_dict."""
    n = name[len("online.") :]
    rules = [
        (r"decoder\.mask_token", "mask_token"),
        (r"decoder\.(proj|pred)\.(weight|bias)", r"\1.\2"),
        (r"decoder\.blocks\.(\d+)\.conv_dw\.(\w+)", r"decoder.\1.dwconv.\2"),
        (r"decoder\.blocks\.(\d+)\.norm\.(\w+)", r"decoder.\1.norm.\2"),
        (r"decoder\.blocks\.(\d+)\.mlp\.fc1\.(\w+)", r"decoder.\1.pwconv1.\2"),
        (r"decoder\.blocks\.(\d+)\.mlp\.fc2\.(\w+)", r"decoder.\1.pwconv2.\2"),
        (r"decoder\.blocks\.(\d+)\.mlp\.grn\.weight", r"decoder.\1.grn.gamma"),
        (r"decoder\.blocks\.(\d+)\.mlp\.grn\.bias", r"decoder.\1.grn.beta"),
        (r"encoder\.model\.stem\.(0|1)\.(\w+)", r"encoder.downsample_layers.0.\1.\2"),
        (r"encoder\.model\.stages\.(\d)\.downsample\.0\.(\w+)", r"encoder.downsample_layers.\1.0.ln.\2"),
        (r"encoder\.model\.stages\.(\d)\.downsample\.1\.weight", r"encoder.downsample_layers.\1.1.kernel"),
        (r"encoder\.model\.stages\.(\d)\.downsample\.1\.bias", r"encoder.downsample_layers.\1.1.bias"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.conv_dw\.weight", r"encoder.stages.\1.\2.dwconv.kernel"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.conv_dw\.bias", r"encoder.stages.\1.\2.dwconv.bias"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.norm\.(\w+)", r"encoder.stages.\1.\2.norm.ln.\3"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.mlp\.fc1\.(\w+)", r"encoder.stages.\1.\2.pwconv1.linear.\3"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.mlp\.fc2\.(\w+)", r"encoder.stages.\1.\2.pwconv2.linear.\3"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.mlp\.grn\.weight", r"encoder.stages.\1.\2.grn.gamma"),
        (r"encoder\.model\.stages\.(\d)\.blocks\.(\d+)\.mlp\.grn\.bias", r"encoder.stages.\1.\2.grn.beta"),
        (r"encoder\.model\.norm(\d)\.(\w+)", r"encoder.norm\1.ln.\2"),
    ]
    for pattern, repl in rules:
        if re.fullmatch(pattern, n):
            return re.sub(pattern, repl, n)
    raise KeyError(name)


def online_params(model):
    return {n: p for n, p in model.named_parameters() if n.startswith("online.") and p.requires_grad}


@pytest.fixture(scope="module")
def atto():
    torch.manual_seed(0)
    return VideoMAC("videomac_cnxv2_atto", decoder_dim=64, init="authors")


def test_every_parameter_has_its_authors_counterpart(atto):
    ours = {to_authors_key(n) for n in online_params(atto)}
    theirs = {k for k, _, _ in authors_model_entries(2, **ATTO, decoder_dim=64)}
    assert ours == theirs


def test_weight_decay_groups_as_the_authors(atto):
    decay, no_decay = param_groups(atto, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in atto.named_parameters()}
    ours_decay = {to_authors_key(names[id(p)]) for p in decay["params"]}
    ours_no_decay = {to_authors_key(names[id(p)]) for p in no_decay["params"]}
    entries = authors_model_entries(2, **ATTO, decoder_dim=64)
    their_no_decay, their_decay = authors_weight_decay_split((k, s) for k, s, _ in entries)
    assert ours_decay == set(their_decay) and ours_no_decay == set(their_no_decay)
    assert "mask_token" in ours_decay and any(k.endswith("grn.gamma") for k in ours_decay)


def test_optimizer_is_fused_only_where_torch_has_it(atto):
    """Fused AdamW (the authors' groups and betas) where every parameter allows it; otherwise the
    default, decided before the first step (torch checks fused devices only there)."""
    opt = build_optimizer(atto, 1e-3)
    assert opt.defaults["fused"] and opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    on_meta = torch.nn.Linear(4, 4, device="meta")
    opt = build_optimizer(on_meta, 1e-3)
    assert not opt.defaults["fused"] and len(opt.param_groups) == 2
    for p in on_meta.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # fused=True would raise here


def _check_rule(name, p, rule, fan_in):
    x = p.detach().double().flatten()
    kind = rule[0]
    if kind == "const":
        assert torch.all(x == rule[1]), f"{name}: expected all {rule[1]}"
        return
    if kind == "trunc_normal":
        std, a, b = rule[1:]
        assert x.min() >= a and x.max() <= b, name
    elif kind == "normal":
        std = rule[1]
    else:  # PyTorch's default for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        assert x.abs().max() <= bound + 1e-12, name
        std = bound / math.sqrt(3)
    if x.numel() >= 500:
        # truncation at +-2 sigma shrinks a unit normal's std to 0.88
        want = std * (0.88 if kind == "trunc_normal" and std == 1.0 else 1.0)
        assert abs(x.std().item() - want) < 0.12 * want, f"{name}: std {x.std().item():.4f}, want {want:.4f}"
        assert abs(x.mean().item()) < 0.15 * want, name


def test_init_as_the_authors_convnext(atto):
    mods = dict(atto.named_modules())
    for name, p in online_params(atto).items():
        owner = mods[name.rsplit(".", 1)[0]]
        w = getattr(owner, "weight", None)
        fan_in = w[0].numel() if isinstance(w, torch.Tensor) and w.ndim > 1 else 1
        _check_rule(name, p, authors_init_rule(to_authors_key(name), "convnext"), fan_in)


def test_init_as_the_authors_resnet():
    # Their ResNet: every sparse conv std 0.02; the dense stem conv std 1 with PyTorch's default bias;
    # LayerNorms 1/0; the decoder as for ConvNeXt but its conv biases left at PyTorch's default.
    torch.manual_seed(0)
    m = VideoMAC("videomac_rn18", decoder_dim=64, init="authors")
    mods = dict(m.named_modules())
    for name, p in online_params(m).items():
        owner = mods[name.rsplit(".", 1)[0]]
        fan_in = owner.weight[0].numel() if hasattr(owner, "weight") else 1
        if name.startswith("online.decoder."):
            key = to_authors_key(name)
        elif ".stem.0." in name:
            key = "encoder.stem." + name.rsplit(".", 1)[1]
        elif isinstance(owner, torch.nn.Conv2d):
            key = "encoder.conv.kernel"
        else:
            key = "encoder.norm.ln." + name.rsplit(".", 1)[1]
        _check_rule(name, p, authors_init_rule(key, "resnet"), fan_in)


def test_target_is_an_exact_copy_after_the_authors_init(atto):
    so, st = atto.online.state_dict(), atto.target.state_dict()
    assert all(torch.equal(so[k], st[k]) for k in so)


def test_timm_init_is_the_default():
    torch.manual_seed(0)
    m = VideoMAC("videomac_cnxv2_atto", decoder_dim=64)
    assert m.online.decoder.proj.weight.std().item() < 0.05  # std-0.02 decoder, not the authors' 1.0
    with pytest.raises(ValueError, match="unknown init"):
        VideoMAC("videomac_cnxv2_atto", init="xavier")


@pytest.mark.parametrize("epochs,niter", [(3, 7), (100, 176)])
def test_ema_schedules(epochs, niter):
    schedule = authors_momentum_schedule(0.996, 1.0, epochs, niter)
    total = epochs * niter
    for step in sorted({0, 1, niter - 1, niter, niter + 3, total // 2, total - 1}):
        epoch, within = divmod(step, niter)
        assert ema_momentum(step, total, 0.996, 1.0, "authors", niter) == pytest.approx(
            authors_momentum_at(schedule, epoch, within), abs=1e-12
        )
        assert ema_momentum(step, total, 0.996, 1.0, "cosine") == pytest.approx(float(schedule[step]), abs=1e-12)
    if epochs == 100:  # what produced Table 1: the momentum never leaves 0.996 (+1e-6)
        assert max(ema_momentum(s, total, 0.996, 1.0, "authors", niter) for s in range(total)) < 0.996002
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ema_momentum(3, 10, schedule="authors")


def test_losses_as_the_authors():
    torch.manual_seed(0)
    m = VideoMAC("videomac_cnxv2_atto", decoder_dim=64)
    f1, f2 = torch.randn(2, 2, 3, 64, 64).unbind(0)
    out = m(f1, f2)
    mask = out["mask"].flatten(1).float()  # (B, L), 1 = masked, as theirs
    lo = authors_forward_loss(f1, out["pred_online"], mask, 32)
    lt = authors_forward_loss(f2, out["pred_target"], mask, 32)
    as_map = lambda t: t.transpose(1, 2).reshape(2, -1, 2, 2)  # noqa: E731  (N, p*p*3, h, w)
    lc = authors_cons_loss(as_map(out["pred_online"]), mask, as_map(out["pred_target"]))
    assert out["loss_online"].item() == pytest.approx(lo.item(), rel=1e-6)
    assert out["loss_target"].item() == pytest.approx(lt.item(), rel=1e-6)
    assert out["loss_consistency"].item() == pytest.approx(lc.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((lo + lt + lc).item(), rel=1e-6)


def test_epoch_is_every_pair(tmp_path):
    counts = [5, 1, 3, 8]
    for v, n in enumerate(counts):
        write_frames(render_video(v, num_frames=n, size=(32, 48))[0], str(tmp_path / f"v{v}"))
    for gap in (1, 2):
        ds = FramePairDataset(str(tmp_path), input_size=32, gap=gap)
        assert len(ds) == len(authors_pairs(counts, gap))


def test_presets_are_the_authors_recipe():
    for name in PRESETS:
        cfg = resolve_config({}, preset=name)
        assert cfg.ema_schedule == "authors" and cfg.init == "authors" and cfg.pairs_per_video is None
        assert cfg.blr == 1e-3 and cfg.epochs == 100 and cfg.warmup_epochs == 10 and cfg.mask_ratio == 0.75
        assert cfg.total_batch == (256 if "cnxv1" in name else 512)
        assert cfg.amp == ("none" if name.startswith("paper-rn") else "bf16")
