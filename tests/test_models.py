"""The registered encoders: timm interface, features_only, and strict loads into timm's twins."""

import pytest
import timm
import torch

import videomac  # noqa: F401  (registers the models)
from videomac.models.videomac_convnext import ARCHS

SMALL = ["videomac_rn18", "videomac_rn50", "videomac_cnxv2_atto", "videomac_cnxv2_t", "videomac_cnxv1_t"]


def test_all_names_registered():
    names = set(timm.list_models("videomac_*"))
    expected = {f"videomac_rn{d}" for d in (18, 34, 50, 101)} | set(ARCHS)
    assert expected <= names
    assert {"videomac_cnxv2_s", "videomac_cnxv2_h", "videomac_cnxv1_s"} <= names


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_convnext_strict_load_into_timm_twin(name):
    twin = ARCHS[name][0]
    with torch.device("meta"):
        ours = timm.create_model(name)
        ref = timm.create_model(twin, num_classes=0)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert v.shape == ref.state_dict()[k].shape, k


@pytest.mark.parametrize("name", ["videomac_cnxv2_atto", "videomac_cnxv2_t", "videomac_cnxv1_t"])
def test_convnext_same_outputs_as_timm_twin(name):
    ours = timm.create_model(name).eval()
    ref = timm.create_model(ARCHS[name][0], num_classes=0).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(ours(x), ref(x))


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
