"""``videomac convert-official`` on checkpoints laid out exactly as the authors' code writes them
(tests/authors_ref.py): the converted timm model computes the authors' encoder; safe loading."""

import os
import re

import pytest
import timm
import torch
from authors_ref import authors_convnext_forward, make_authors_convnext_state
from safetensors import safe_open

import videomac  # noqa: F401
from videomac.cli import main
from videomac.convert import UntrustedCheckpointError, convert_official, convert_official_file, load_checkpoint

# (model, authors' version, depths, dims, isotropic): V2 conv-MLP (atto), V2 linear MLP (tiny), V1, isotropic
CASES = [
    ("videomac_cnxv2_atto", 2, (2, 2, 6, 2), (40, 80, 160, 320), False),
    # a V2 like atto, at 2-3 s: slow
    pytest.param("videomac_cnxv2_t", 2, (3, 3, 9, 3), (96, 192, 384, 768), False, marks=pytest.mark.slow),
    ("videomac_cnxv1_t", 1, (3, 3, 9, 3), (96, 192, 384, 768), False),
    ("videomac_cnxv2_iso_s", 2, 18, 384, True),
]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,version,depths,dims,iso", CASES)
def test_cli_converts_the_authors_checkpoint(name, version, depths, dims, iso, tmp_path, capsys):
    ck = make_authors_convnext_state(version, depths, dims, isotropic=iso, seed=7)
    path = tmp_path / "checkpoint-99.pth"
    torch.save(ck, path)  # holds args: argparse.Namespace, as theirs
    out = tmp_path / "encoder.safetensors"
    assert main(["convert-official", str(path), "--model", name, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == name and meta["source"] == "online_without_ddp"
    assert meta["filled_from_init"] == ("" if iso else "head.norm.weight,head.norm.bias")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = authors_convnext_forward(ck, x, version, depths, dims, isotropic=iso, return_stages=not iso)
        if iso:
            assert rel(model.forward_features(x), ref) < 1e-4
        else:
            assert rel(model.forward_features(x), ref[0]) < 1e-4
            _, stages = model.forward_intermediates(x)  # every stage after its norm{i}, as theirs
            assert max(rel(a, b) for a, b in zip(stages, ref[1])) < 1e-4
    # the online model is exported, not the EMA target
    enc_key = "encoder.norm.ln.weight" if iso else "encoder.norm3.ln.weight"
    ours = model.norm.weight if iso else model.norm3.weight
    assert torch.equal(ours, ck["online_without_ddp"][enc_key])
    assert not torch.equal(ours, ck["target_without_ddp"][enc_key])


def test_fallbacks_model_online_with_ddp_prefix_and_bare_state_dict():
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), ddp=True, seed=1)
    ref, _ = convert_official(ck, "videomac_cnxv2_atto")
    only_ddp = {"model_online": ck["model_online"], "epoch": 99}
    assert all(k.startswith("module.") for k in only_ddp["model_online"])
    sd, _ = convert_official(only_ddp, "videomac_cnxv2_atto")
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    bare = {k[len("encoder.") :]: v for k, v in ck["online_without_ddp"].items() if k.startswith("encoder.")}
    sd, _ = convert_official(bare, "videomac_cnxv2_atto")
    assert all(torch.equal(sd[k], v) for k, v in ref.items())


def test_every_key_is_accounted_for():
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=2)
    online = dict(ck["online_without_ddp"])
    online.pop("encoder.stages.2.5.grn.gamma")
    online["encoder.stages.0.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as e:
        convert_official({"online_without_ddp": online}, "videomac_cnxv2_atto")
    msg = str(e.value)
    assert (
        "unknown keys ['stages.0.0.extra.weight']" in msg and "missing keys ['stages.2.blocks.5.mlp.grn.weight']" in msg
    )
    # a wrong architecture is an error, not a partial load
    with pytest.raises(ValueError, match="does not fit|missing keys"):
        convert_official(ck, "videomac_cnxv2_femto")
    # a ConvNeXt-V2 FCMAE encoder (no stage norms) goes into timm's convnextv2_*, not a VideoMAC model
    fcmae = {k: v for k, v in online.items() if not re.match(r"encoder\.norm\d", k)}
    fcmae["encoder.stages.2.5.grn.gamma"] = ck["online_without_ddp"]["encoder.stages.2.5.grn.gamma"]
    fcmae.pop("encoder.stages.0.0.extra.weight")
    with pytest.raises(ValueError, match="no stage norms"):
        convert_official(fcmae, "videomac_cnxv2_atto")
    sd, filled = convert_official(fcmae, "convnextv2_atto")
    assert filled == ["head.norm.weight", "head.norm.bias"]
    timm.create_model("convnextv2_atto", num_classes=0).load_state_dict(sd, strict=True)


class Harmless:
    """Some Python object besides tensors and argparse.Namespace."""

    value = 1


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=3)
    ck["payload"] = Evil(str(marker))
    path = tmp_path / "checkpoint-99.pth"
    torch.save(ck, path)
    out = tmp_path / "encoder.safetensors"
    assert main(["convert-official", str(path), "--model", "videomac_cnxv2_atto", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and "posix.system" in err
    with pytest.raises(UntrustedCheckpointError, match="trust_pickle=True"):
        convert_official_file(str(path), "videomac_cnxv2_atto", str(out))
    assert not marker.exists() and not out.exists()


def test_trust_pickle_loads_other_objects(tmp_path):
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=4)
    ck["extra"] = Harmless()
    path = tmp_path / "checkpoint-99.pth"
    torch.save(ck, path)
    with pytest.raises(UntrustedCheckpointError, match=r"Harmless.*--trust-pickle"):
        load_checkpoint(str(path))
    out = tmp_path / "encoder.safetensors"
    assert (
        main(["convert-official", str(path), "--model", "videomac_cnxv2_atto", "--out", str(out), "--trust-pickle"])
        == 0
    )
    assert out.exists()
    # without the Namespace the file is plain weights_only data
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=4, include_args=False)
    torch.save(ck, path)
    assert set(load_checkpoint(str(path))) == set(ck)


def test_each_family_file_declares_its_conversion_found_through_the_model():
    """timm's convention: the family file's ``checkpoint_filter_fn(state_dict, model)`` takes both released
    layouts; ``convert_official`` finds it through the model's class, and a model without one is refused."""
    from videomac.models import videomac_convnext, videomac_convnext_iso, videomac_resnet
    from videomac.pretrained import WeightsError, checkpoint_filter_for, headless_model

    for name, family in [
        ("videomac_cnxv2_atto", videomac_convnext),
        ("convnextv2_atto", videomac_convnext),  # timm's ConvNeXt takes FCMAE encoders
        ("videomac_cnxv2_iso_s", videomac_convnext_iso),
        ("videomac_rn18", videomac_resnet),
    ]:
        assert checkpoint_filter_for(headless_model(name)) is family.checkpoint_filter_fn, name
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=5)
    model = timm.create_model("videomac_cnxv2_atto", num_classes=0)
    raw = videomac_convnext.checkpoint_filter_fn(ck, model)  # their pretraining checkpoint
    bare = videomac_convnext.checkpoint_filter_fn(ck["online_without_ddp"], model)  # convert_pth's bare encoder
    assert list(raw) == list(model.state_dict()) and raw.filled == ("head.norm.weight", "head.norm.bias")
    assert all(torch.equal(raw[k], bare[k]) for k in raw)
    model.load_state_dict(raw, strict=True)
    with pytest.raises(WeightsError, match=r"resnet18 \(ResNet\) has no conversion of the authors' checkpoints"):
        convert_official(ck, "resnet18")
