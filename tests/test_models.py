"""The registered encoders: timm interface, features_only, and the authors' ConvNeXt (timm's + stage norms)."""

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import model_entrypoint
from timm.models.convnext import ConvNeXt

import videomac  # noqa: F401  (registers the models)
from videomac.models.videomac_convnext import ARCHS, VideoMACConvNeXt

SMALL = ["videomac_rn18", "videomac_rn50", "videomac_cnxv2_atto", "videomac_cnxv2_t", "videomac_cnxv1_t"]
ISO = ["videomac_cnxv2_iso_s", "videomac_cnxv2_iso_b"]


def test_all_names_registered():
    names = set(timm.list_models("videomac_*"))
    expected = {f"videomac_rn{d}" for d in (18, 34, 50, 101)} | set(ARCHS) | set(ISO)
    assert expected <= names
    assert {"videomac_cnxv2_s", "videomac_cnxv2_h", "videomac_cnxv1_s"} <= names


def twin(name, **kwargs):
    """timm's own ConvNeXt of the same size and block arguments (V1 without layer scale, as the authors')."""
    # the entry point itself: timm.create_model drops kwargs that are None (ls_init_value=None)
    ls = ARCHS[name][1].get("ls_init_value", 1e-6)
    return model_entrypoint(ARCHS[name][0])(num_classes=0, ls_init_value=ls, **kwargs)


def stage_norm_keys(sd):
    return [k for k in sd if re.match(r"norm\d+\.", k)]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_convnext_is_timm_twin_plus_stage_norms(name):
    with torch.device("meta"):
        ours = timm.create_model(name)
        ref = twin(name)
    assert isinstance(ours, VideoMACConvNeXt) and isinstance(ours, ConvNeXt)
    sd = ours.state_dict()
    norms = stage_norm_keys(sd)
    assert norms == [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    for i in range(4):
        m = getattr(ours, f"norm{i}")
        assert type(m) is LayerNorm2d and m.eps == 1e-6 and m.weight.shape == (ours.feature_info[i]["num_chs"],)
    assert type(ours.norm_pre) is torch.nn.Identity and hasattr(ours.head, "norm")
    # everything but the stage norms is timm's model, key for key and shape for shape
    rest = {k: v for k, v in sd.items() if k not in norms}
    assert list(rest) == list(ref.state_dict())
    for k, v in rest.items():
        assert v.shape == ref.state_dict()[k].shape, k
    # V1 as the authors': no layer scale
    assert not any(k.endswith("gamma") for k in sd)


@pytest.mark.parametrize("name", ["videomac_cnxv2_atto", "videomac_cnxv2_t", "videomac_cnxv1_t"])
def test_convnext_same_outputs_as_timm_twin_plus_stage_norms(name):
    torch.manual_seed(0)
    ours = timm.create_model(name).eval()
    with torch.no_grad():
        for k, p in ours.named_parameters():
            if re.match(r"norm\d+\.", k) or "grn" in k:
                p.normal_(0.5, 0.2)
    ref = twin(name).eval()
    sd = ours.state_dict()
    ref.load_state_dict({k: v for k, v in sd.items() if k not in stage_norm_keys(sd)}, strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = ref.stem(x)
        stages = []
        for i, stage in enumerate(ref.stages):  # the authors' forward: LayerNorm after every stage
            z = stage(y).permute(0, 2, 3, 1)
            y = F.layer_norm(z, z.shape[-1:], sd[f"norm{i}.weight"], sd[f"norm{i}.bias"], 1e-6).permute(0, 3, 1, 2)
            stages.append(y)
        torch.testing.assert_close(ours.forward_features(x), y)
        final, inter = ours.forward_intermediates(x)
        torch.testing.assert_close(final, y)
        for a, b in zip(inter, stages):
            torch.testing.assert_close(a, b)
        feats = timm.create_model(name, features_only=True, out_indices=(1, 2, 3))
        # what the pruned model keeps (timm before 1.0.29 keeps the pooled head's norm), strictly
        own = feats.state_dict()
        feats.load_state_dict({f"model.{k}": v for k, v in sd.items() if f"model.{k}" in own}, strict=True)
        for a, b in zip(feats.eval()(x), stages[1:]):
            torch.testing.assert_close(a, b)
        # the pooled head (timm's head.norm) stays for forward_head
        torch.testing.assert_close(ours(x), ref.forward_head(y))


def test_group_matcher_puts_stage_norms_in_their_stage():
    from timm.models import group_parameters

    m = timm.create_model("videomac_cnxv2_atto")
    groups = group_parameters(m, m.group_matcher(coarse=False))
    order = {n: i for i, names in groups.items() for n in names}
    last_block = [n for n in order if n.startswith("stages.1.blocks.1.")][0]
    assert order["norm1.weight"] > order[last_block]
    assert order["norm1.weight"] < order["stages.2.downsample.0.weight"]
    coarse = group_parameters(m, m.group_matcher(coarse=True))
    where = {n: i for i, names in coarse.items() for n in names}
    assert where["norm2.weight"] == where["stages.2.blocks.0.conv_dw.weight"]
    m.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in m.stages)
    m(torch.randn(1, 3, 64, 64)).sum().backward()


@pytest.mark.parametrize(
    "name,out_chs,params_m",
    [
        ("videomac_rn18", 512, 11.2),
        ("videomac_rn34", 512, 21.3),
        ("videomac_rn50", 2048, 23.5),
        ("videomac_rn101", 2048, 42.5),
    ],
)
def test_resnet_architecture(name, out_chs, params_m):
    with torch.device("meta"):
        m = timm.create_model(name)
    assert m.num_features == out_chs
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - params_m) < 0.1
    kinds = {type(x).__name__ for x in m.modules()}
    assert "BatchNorm2d" not in kinds and "MaxPool2d" not in kinds and "ReLU" not in kinds
    assert m.stem[0].kernel_size == (4, 4) and m.stem[0].stride == (4, 4)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name,twin", [("videomac_rn18", "resnet18"), ("videomac_rn50", "resnet50")])
def test_resnet_output_stride(name, twin, output_stride):
    """output_stride dilates the last stages as timm's ResNet does: the same strides and dilations conv by
    conv, feature_info reductions that match the maps, and the stride-32 weights load strictly."""
    m = timm.create_model(name, output_stride=output_stride).eval()

    def geometry(model):
        convs = model.named_modules()
        return [
            (n, c.stride, c.dilation, c.padding)
            for n, c in convs
            if n.startswith("layer") and c._get_name() == "Conv2d"
        ]

    with torch.device("meta"):
        assert geometry(m) == geometry(timm.create_model(twin, output_stride=output_stride))
    m.load_state_dict(timm.create_model(name).state_dict(), strict=True)
    want = [min(r, output_stride) for r in (4, 8, 16, 32)]
    assert [f["reduction"] for f in m.feature_info] == want
    feats = timm.create_model(name, features_only=True, output_stride=output_stride)(torch.randn(1, 3, 64, 96))
    assert [(f.shape[-2], f.shape[-1]) for f in feats] == [(64 // r, 96 // r) for r in want]
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32, got 4"):
        timm.create_model(name, output_stride=4)


@pytest.mark.parametrize("arch,size", [("DeepLabV3Plus", 64), ("DeepLabV3", 64), ("PAN", 128)])
def test_resnet_in_smp_dilated_decoders(arch, size):
    """segmentation_models_pytorch's decoders that ask timm for output_stride 16 / 8, forward and backward."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = getattr(smp, arch)("tu-videomac_rn18", encoder_weights=None, classes=2)
    y = net(torch.randn(2, 3, size, size))
    assert y.shape == (2, 2, size, size)
    y.square().mean().backward()
    assert net.encoder.model.layer4[1].conv2.dilation in ((2, 2), (4, 4))
    # the dilated stage learns (its convs' gradients are 0 until norm2's zero-initialised weight moves)
    assert net.encoder.model.layer4[1].norm2.weight.grad.abs().max() > 0


@pytest.mark.parametrize("name", SMALL)
def test_timm_interface(name):
    m = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 96)
    f = m.forward_features(x)
    assert f.shape == (2, m.num_features, 2, 3)
    assert m(x).shape == (2, m.num_features)  # headless by default
    assert m.forward_head(f, pre_logits=True).shape == (2, m.num_features)
    m.reset_classifier(5)
    assert m(x).shape == (2, 5) and m.get_classifier().out_features == 5
    assert timm.create_model(name, num_classes=7)(x).shape == (2, 7)
    assert m.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


@pytest.mark.parametrize("name", SMALL)
def test_features_only(name):
    m = timm.create_model(name, features_only=True).eval()
    feats = m(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == m.feature_info.channels()
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    m = timm.create_model(name, features_only=True, out_indices=(1, 3))
    assert len(m(torch.randn(1, 3, 64, 64))) == 2


def n_params(name):
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def test_parameter_counts_against_the_paper():
    # headless counts; the paper's Table 2: RN18 12M, RN50 26M, CNXv2-T 29M, CNXv2-S 50M, iso. CNXv2-S 22M
    assert n_params("videomac_cnxv2_iso_s") == 21_979_008  # the authors' SparseConvNeXtV2_Isotropic(384, 18)
    assert n_params("videomac_cnxv2_iso_b") == 86_425_344
    assert round(n_params("videomac_cnxv2_t") / 1e6) == 28  # 27.87M + stage norms; 28.6M with a 1000-class head
    assert round(n_params("videomac_cnxv2_s") / 1e6) == 50


@pytest.mark.parametrize("name", ISO)
def test_isotropic_architecture(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    dim = 384 if name.endswith("_s") else 768
    assert m.num_features == dim and len(m.blocks) == 18
    assert m.stem.kernel_size == (16, 16) and m.stem.stride == (16, 16) and m.stem.bias is not None
    assert type(m.norm) is LayerNorm2d and m.norm.eps == 1e-6
    assert all(b.gamma is None and hasattr(b.mlp, "grn") for b in m.blocks)
    assert {f["reduction"] for f in m.feature_info} == {16} and len(m.feature_info) == 18
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["pool_size"] == (14, 14) and cfg["num_classes"] == 0
    assert cfg["first_conv"] == "stem" and cfg["classifier"] == "head.fc"


def test_isotropic_timm_interface():
    m = timm.create_model("videomac_cnxv2_iso_s").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 384, 4, 6)
        assert m(x).shape == (2, 384)
        torch.testing.assert_close(m.forward_head(f, pre_logits=True), f.mean((2, 3)))
        final, inter = m.forward_intermediates(x, indices=[0, 17])
        torch.testing.assert_close(final, f)
        torch.testing.assert_close(m.norm(inter[1]), f)
        m.reset_classifier(5)
        assert m(x).shape == (2, 5) and m.get_classifier().out_features == 5
        assert timm.create_model("videomac_cnxv2_iso_s", num_classes=7)(x).shape == (2, 7)
        feats = timm.create_model("videomac_cnxv2_iso_s", features_only=True, out_indices=(5, 17))
        assert feats.feature_info.reduction() == [16, 16] and len(feats.model.blocks) == 18
        feats.load_state_dict(
            {f"model.{k}": v for k, v in m.state_dict().items() if not k.startswith("head.")}, strict=False
        )
        out = feats.eval()(x)
        torch.testing.assert_close(out[1], inter[1])
    groups = m.group_matcher()
    assert groups["stem"] == r"^stem"
    m.set_grad_checkpointing(True)
    m.train()(x).sum().backward()
    assert m.stem.weight.grad is not None
