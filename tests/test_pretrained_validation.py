"""One check for every weights file a user loads (``pretrained_cfg_overlay=dict(file=...)``, torch.hub,
``propagate``/``eval --weights``, ``convert-official``): floating point, finite, this model's keys and
shapes, before any work; unreadable files and pickles are one line that never advises --trust-pickle for a
file that merely is not a checkpoint; the registry's schema is checked per entry and field."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from authors_ref import make_authors_convnext_state
from PIL import Image
from safetensors.torch import save_file

import videomac  # noqa: F401
from videomac.cli import main
from videomac.pretrained import WeightsError
from videomac.registry import load_registry

REPO = Path(__file__).resolve().parents[1]
ATTO = "videomac_cnxv2_atto"


def atto_weights():
    return {k: v.clone() for k, v in timm.create_model(ATTO, num_classes=0).state_dict().items()}


def broken(kind: str):
    sd = atto_weights()
    if kind == "int8":
        sd["stem.0.weight"] = sd["stem.0.weight"].to(torch.int8)
    elif kind == "bool":
        sd["stages.1.blocks.0.norm.weight"] = sd["stages.1.blocks.0.norm.weight"] > 0
    elif kind == "nan":
        sd["stages.2.blocks.3.mlp.fc1.weight"][0, 0] = float("nan")
    elif kind == "shape":
        sd["stages.3.downsample.1.weight"] = sd["stages.3.downsample.1.weight"][:, :, :1].contiguous()
    return sd


EXPECT = {
    "int8": "stem.0.weight is int8, expected floating point",
    "bool": "stages.1.blocks.0.norm.weight is bool, expected floating point",
    "nan": "stages.2.blocks.3.mlp.fc1.weight holds 1 NaN/inf values",
    "shape": "shape mismatch: stages.3.downsample.1.weight is (320, 160, 1, 2) in the file",
}


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_overlay_file_and_torch_hub_refuse_bad_weights(kind, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    save_file(broken(kind), str(path))
    with pytest.raises(WeightsError) as e:
        timm.create_model(ATTO, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert EXPECT[kind] in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    if kind == "nan":
        with pytest.raises(WeightsError, match="NaN"):
            torch.hub.load(
                str(REPO), ATTO, source="local", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
            )
    if kind != "int8":
        return
    # the good file loads
    good = tmp_path / "good.safetensors"
    save_file(atto_weights(), str(good))
    timm.create_model(ATTO, pretrained=True, pretrained_cfg_overlay=dict(file=str(good)))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def clip(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 16:40] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return frames, tmp_path / "mask.png"


def test_propagate_weights_one_line_for_unusable_files(clip, tmp_path, capsys):
    frames, mask = clip
    marker = tmp_path / "pwned"
    files = {}
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Evil(str(marker))}, tmp_path / "evil.pth")
    files["evil.pth"] = "holds the Python object 'posix.system'"
    with zipfile.ZipFile(tmp_path / "plain.pth", "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    files["plain.pth"] = "not a PyTorch checkpoint or safetensors file"
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    files["bad.safetensors"] = "not a PyTorch checkpoint or safetensors file"
    save_file(broken("nan"), str(tmp_path / "nan.safetensors"))
    files["nan.safetensors"] = "NaN/inf"
    save_file(
        {k: v for k, v in atto_weights().items() if not k.startswith("stages.3")}, str(tmp_path / "partial.safetensors")
    )
    files["partial.safetensors"] = "missing keys: stages.3.downsample.0.weight"
    for name, expect in files.items():
        out = tmp_path / f"out-{name}"
        code = main(
            [
                "propagate",
                str(frames),
                "--mask",
                str(mask),
                "--out",
                str(out),
                "--model",
                ATTO,
                "--weights",
                str(tmp_path / name),
                "--no-progress",
                "--no-overlay",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        last = err.splitlines()[-1]
        assert last.startswith("videomac propagate: error:") and expect in last and str(tmp_path / name) in last
        assert "--trust-pickle" not in err and "Traceback" not in err
        assert not (out / "masks").exists() or not any((out / "masks").iterdir())
    assert not marker.exists()


def test_convert_official_one_line_exit_2(tmp_path, capsys):
    ck = make_authors_convnext_state(2, (2, 2, 6, 2), (40, 80, 160, 320), seed=1, decoder_dim=64)
    good = tmp_path / "checkpoint-99.pth"
    torch.save(ck, good)
    cases = {}
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("a.txt", "x")
    cases["plain.zip"] = "not a PyTorch checkpoint or safetensors file"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "is empty (0 bytes)"
    as_int = {"online_without_ddp": {k: (v * 100).to(torch.int32) for k, v in ck["online_without_ddp"].items()}}
    torch.save(as_int, tmp_path / "int.pth")
    cases["int.pth"] = "is int32, expected floating point"
    nan = {"online_without_ddp": dict(ck["online_without_ddp"])}
    nan["online_without_ddp"]["encoder.stages.1.0.pwconv1.linear.weight"] = torch.full((320, 80), float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    cases["nan.pth"] = "stages.1.0.pwconv1.linear.weight holds 25600 NaN/inf"
    for name, expect in cases.items():
        out = tmp_path / f"{name}.safetensors"
        assert main(["convert-official", str(tmp_path / name), "--model", ATTO, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("videomac convert-official: error:"), err
        assert expect in err and "--trust-pickle" not in err, err
        assert not out.exists()
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main(["convert-official", str(good), "--model", ATTO, "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a directory" in err and str(folder) in err and len(err.splitlines()) == 1
    assert list(folder.iterdir()) == []


def test_registry_schema_errors_name_the_entry_and_field(tmp_path):
    base = dict(model="videomac_rn18", tag="t1", hf_hub_id="org/x", filename="model.safetensors")
    bad = {
        "epochs": (
            dict(base, epochs="100"),
            r"weights\[0\] \(videomac_rn18\.t1\): field 'epochs' is str '100', "
            r"expected int or null",
        ),
        "metrics": (dict(base, metrics={"J&F": "high"}), r"metrics \['J&F'\] are not numbers"),
        "sha": (dict(base, sha256="abc"), "field 'sha256' is 'abc', expected 64 lowercase hex"),
        "unknown": (dict(base, sha="x"), r"unknown fields \['sha'\]"),
        "format": (dict(base, format="onnx"), "field 'format' is 'onnx'"),
        "url": (dict(base, format="authors"), "an 'authors' entry needs 'url'"),
        "flag": (dict(base, input_size=True), "field 'input_size' is bool True"),
    }
    for key, (entry, pattern) in bad.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({"weights": [entry]}))
        with pytest.raises(ValueError, match=pattern):
            load_registry(str(path))
    (tmp_path / "list.json").write_text(json.dumps({"weights": {"a": 1}}))
    with pytest.raises(ValueError, match="expected an object with a 'weights' list"):
        load_registry(str(tmp_path / "list.json"))
    assert [e.name for e in load_registry()][:4] == [
        "videomac_rn50.yt18_authors",
        "videomac_cnxv2_s.yt18_authors",
        "videomac_rn18.yt18_authors",
        "videomac_cnxv2_t.yt18_authors",
    ]
