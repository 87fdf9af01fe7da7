"""Frozen-feature extraction: stages, strides, normalization, weights."""

import numpy as np
import pytest
import timm
import torch

from videomac.eval.features import FeatureExtractor, create_encoder, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "name,stage,stride,natural,channels",
    [
        ("resnet18", None, None, 16, 256),  # default: layer3 at stride 8
        ("resnet18", "layer4", 8, 32, 512),
        ("convnextv2_atto", None, None, 16, 160),  # default: stages.2 at stride 8
        ("convnextv2_atto", "stages.2", 16, 16, 160),
        ("videomac_rn18", None, None, 16, 256),
    ],
)
def test_stage_and_stride(name, stage, stride, natural, channels):
    fe = FeatureExtractor(name, stage=stage, stride=stride)
    want = stride or 8
    assert fe.stride == want and fe.natural_stride == natural
    f = fe(np.zeros((2, 64, 96, 3), np.uint8))
    assert f.shape == (2, channels, 64 // want, 96 // want)


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
