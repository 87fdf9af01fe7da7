"""Frozen-feature extraction: stages, strides, normalization, weights."""

import copy

import numpy as np
import pytest
import timm
import torch

from videomac.eval.features import FeatureExtractor, create_encoder, load_weights


@pytest.mark.parametrize(
    "name,stage,stride,natural,channels",
    [
        ("resnet18", None, None, 32, 512),  # default: the last stage (layer4) at stride 8
        ("resnet18", "layer3", 8, 16, 256),
        ("convnextv2_atto", None, None, 32, 320),  # default: stages.3 at stride 8
        ("convnextv2_atto", "stages.2", 16, 16, 160),
        ("videomac_rn18", None, None, 32, 512),
    ],
)
def test_stage_and_stride(name, stage, stride, natural, channels):
    fe = FeatureExtractor(name, stage=stage, stride=stride)
    want = stride or 8
    assert fe.stride == want and fe.natural_stride == natural
    f = fe(np.zeros((2, 64, 96, 3), np.uint8))
    assert f.shape == (2, channels, 64 // want, 96 // want)


@pytest.mark.parametrize(
    "name,stage,channels",
    [("videomac_rn50", "layer4", 2048), pytest.param("videomac_cnxv2_s", "stages.3", 768, marks=pytest.mark.slow)],
)
def test_paper_default_features(name, stage, channels):
    """docs/design.md §5: the last stage at output stride 8 (RN50 2048-d, CNXv2-S 768-d)."""
    import videomac  # noqa: F401  (registers the videomac_* encoders)

    torch.manual_seed(0)
    model = timm.create_model(name)
    fe = FeatureExtractor(model)
    assert fe.stage == stage and fe.stride == 8 and fe.natural_stride == 32
    assert fe.post_norm == (None if name.endswith("rn50") else "norm3")
    f = fe(np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8))
    assert f.shape == (1, channels, 64 // 8, 96 // 8)
    assert torch.isfinite(f).all() and f.std() > 0
    # kernel sizes and weights are unchanged: only strides (and, for ConvNeXt, the padding of the 2x2
    # downsampling convs) differ; the strided convs of the last two stages are stride 1 now
    fresh = dict(timm.create_model(name).named_modules())
    for mname, m in fe.model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            ref = fresh.get(mname) or fresh[mname.replace(".conv", "")]
            assert m.kernel_size == ref.kernel_size and m.weight.shape == ref.weight.shape
    strided = [n for n, m in fe.model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    last_two = ("layer3", "layer4") if name.endswith("rn50") else ("stages.2", "stages.3")
    assert strided and not [n for n in strided if n.startswith(last_two)], strided


def test_features_after_stage_norm():
    """A model with ``norm{i}`` after ``stages.i`` (the videomac ConvNeXt with per-stage LayerNorms): the
    extractor's features are taken after that norm, whether or not the model's forward applies it."""
    from timm.layers import LayerNorm2d

    torch.manual_seed(0)
    model = timm.create_model("convnextv2_atto")
    plain = FeatureExtractor(copy.deepcopy(model))
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    before = plain(frames)
    norm = LayerNorm2d(320)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    model.norm3 = norm
    model.norm2 = torch.nn.Identity()  # a norm of another stage plays no part
    fe = FeatureExtractor(model)
    assert fe.stage == "stages.3" and fe.post_norm == "norm3" and fe.describe()["post_norm"] == "norm3"
    after = fe(frames)
    assert after.shape == before.shape == (2, 320, 8, 12)
    torch.testing.assert_close(after, norm(before))
    assert FeatureExtractor(model, stage="stages.2", stride=8).post_norm == "norm2"
    assert FeatureExtractor(model, stage="stages.1").post_norm is None


def test_normalization_from_pretrained_cfg():
    fe = FeatureExtractor("resnet18")
    x = fe.preprocess(np.full((1, 4, 4, 3), 255, np.uint8))
    mean, std = fe.model.pretrained_cfg["mean"], fe.model.pretrained_cfg["std"]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(mean, std)]))


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet18x'.*resnet18"):
        create_encoder("resnet18x")


def test_weights_roundtrip_and_errors(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet18")
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    save_file({k: v for k, v in sd.items() if not k.startswith("fc.")}, str(tmp_path / "w.safetensors"))
    torch.save({"model": sd}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        fe = FeatureExtractor("resnet18", weights=str(tmp_path / f))
        torch.testing.assert_close(fe.model.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    bad = dict(sd)
    del bad["layer2.0.conv1.weight"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing keys: layer2.0.conv1.weight; unexpected keys: extra"):
        load_weights(timm.create_model("resnet18"), str(tmp_path / "bad.pt"))
    with pytest.raises(FileNotFoundError):
        load_weights(src, str(tmp_path / "nope.pt"))


def test_bf16_features_run_under_autocast():
    """dtype=bf16 runs the model under autocast on any device (casting only the input to bf16 met fp32
    weights: 'Input type (BFloat16) and bias type (float) should be the same')."""
    frames = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    full = FeatureExtractor("videomac_rn18")
    half = FeatureExtractor("videomac_rn18", dtype=torch.bfloat16)
    half.load_state_dict(full.state_dict())
    a, b = full(frames), half(frames).float()
    assert a.shape == b.shape and ((a - b).norm() / a.norm()).item() < 3e-2


def test_default_stage_is_what_the_model_declares():
    """The family declares its evaluation stage (``eval_stage``); a model without one gets its last
    feature_info stage at stride 8."""
    import videomac  # noqa: F401  (registers the videomac_* encoders)

    torch.manual_seed(0)
    iso = FeatureExtractor(timm.create_model("videomac_cnxv2_iso_s"))
    assert (iso.stage, iso.stride, iso.natural_stride) == ("norm", 16, 16)
    model = timm.create_model("videomac_rn18")
    model.eval_stage = ("layer3", 16)
    fe = FeatureExtractor(model)
    assert (fe.stage, fe.stride, fe.natural_stride) == ("layer3", 16, 16)
    assert fe(np.zeros((1, 64, 96, 3), np.uint8)).shape == (1, 256, 4, 6)
