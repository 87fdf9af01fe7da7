"""Weights hub without network: an offline Hugging Face cache (its real layout) serves
pretrained=True, torch.hub.load(source='local'), hf-hub: and local-dir: loading, sha256 checks, the
no-weights error, export/push --dry-run, and importing checkpoints in the authors' sparse layout
(tests/test_convert.py checks the conversion against the authors' forward)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import videomac  # noqa: F401
from videomac.cli import main
from videomac.convert import convert_official, kernel_to_dense
from videomac.hub import export_folder
from videomac.pretrained import WeightsNotPublishedError, sha256_file
from videomac.registry import load_registry

REPO = Path(__file__).resolve().parents[1]


def put_in_hf_cache(cache: Path, repo_id: str, files: dict, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay files out as huggingface_hub's cache does: blobs, snapshots/<commit>/ links, refs/main."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        blob = root / "blobs" / sha256_file(str(src))
        blob.write_bytes(Path(src).read_bytes())
        os.symlink(os.path.relpath(blob, snap), snap / name)


def run_py(code: str, env: dict) -> dict:
    full = dict(os.environ, HF_HUB_OFFLINE="1", **env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        cwd=str(REPO),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A registry whose videomac_cnxv2_atto entry is 'published' into an offline HF cache."""
    tmp = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = timm.create_model("videomac_cnxv2_atto")
    folder = export_folder(model, str(tmp / "export"), repo_id="testorg/atto")
    weights = tmp / "export" / "model.safetensors"
    cache = tmp / "cache"
    put_in_hf_cache(cache, "testorg/atto", {"model.safetensors": weights, "config.json": tmp / "export/config.json"})
    entry = dict(
        model="videomac_cnxv2_atto",
        tag="test_e1",
        hf_hub_id="testorg/atto",
        filename="model.safetensors",
        sha256=folder["sha256"],
        recipe="test",
        data="synthetic",
        metrics={"DAVIS-2017 J&F": 1.0},
    )
    good = tmp / "registry.json"
    good.write_text(json.dumps({"weights": [entry]}))
    bad = tmp / "bad.json"
    bad.write_text(json.dumps({"weights": [dict(entry, sha256="0" * 64)]}))
    return dict(weights=weights, cache=cache, good=good, bad=bad, sha=folder["sha256"])


@pytest.mark.slow
def test_pretrained_true_from_offline_cache_timm_and_torch_hub(published):
    out = run_py(
        f"""
        import json, timm, torch, videomac
        from safetensors.torch import load_file
        ref = load_file({str(published["weights"])!r})
        m = timm.create_model('videomac_cnxv2_atto', pretrained=True)
        same = all(torch.equal(m.state_dict()[k], v) for k, v in ref.items())
        tagged = timm.create_model('videomac_cnxv2_atto.test_e1', pretrained=True)
        f = timm.create_model('videomac_cnxv2_atto', pretrained=True, features_only=True, out_indices=(1, 2, 3))
        chans = f.feature_info.channels()
        h = torch.hub.load({str(REPO)!r}, 'videomac_cnxv2_atto', source='local', pretrained=True)
        hub_same = all(torch.equal(h.state_dict()[k], v) for k, v in ref.items())
        import importlib.util
        spec = importlib.util.spec_from_file_location('hubconf', {str(REPO / "hubconf.py")!r})
        hubconf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hubconf)
        entries = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')]
        print(json.dumps(dict(same=same, tag=tagged.pretrained_cfg['tag'], chans=chans, hub_same=hub_same,
                              entries=entries, listed=timm.list_pretrained('videomac*'))))
        """,
        dict(VIDEOMAC_WEIGHTS_REGISTRY=str(published["good"]), HF_HUB_CACHE=str(published["cache"])),
    )
    assert out["same"] and out["hub_same"]
    assert out["tag"] == "test_e1"
    assert out["chans"] == [80, 160, 320]
    assert "videomac_cnxv2_s" in out["entries"] and "videomac_rn50" in out["entries"]
    assert out["listed"] == ["videomac_cnxv2_atto.test_e1"]


@pytest.mark.slow
def test_sha256_mismatch_names_both_hashes(published):
    out = run_py(
        """
        import json, timm, videomac
        try:
            timm.create_model('videomac_cnxv2_atto', pretrained=True)
            print(json.dumps(dict(err=None)))
        except ValueError as e:
            print(json.dumps(dict(err=str(e))))
        """,
        dict(VIDEOMAC_WEIGHTS_REGISTRY=str(published["bad"]), HF_HUB_CACHE=str(published["cache"])),
    )
    assert "sha256 mismatch" in out["err"] and "0" * 64 in out["err"] and published["sha"] in out["err"]


@pytest.mark.slow
def test_hf_hub_and_local_dir_loading(published, tiny_run, tmp_path):
    run = tiny_run  # the session's tiny run (2 steps of helpers.TINY): push and export only read it
    assert main(["push", str(run), "--repo-id", "me/atto-run", "--dry-run", "--folder", str(tmp_path / "repo")]) == 0
    repo = tmp_path / "repo"
    assert sorted(os.listdir(repo)) == ["README.md", "config.json", "model.safetensors"]
    card = (repo / "README.md").read_text()
    assert "hf-hub:me/atto-run" in card and "library_name: timm" in card and "@inproceedings" in card
    # every field of the card comes from this run's config: 64 px, 2 steps, built-in videos, stride 32
    assert "64×64 crops during pretraining" in card and "224×224" not in card
    # what was trained (the checkpoint's step, epoch and micro-batches), not the config's planned 100 epochs
    assert "on the built-in procedural videos for 2 optimizer steps (" in card and "stride 32" in card
    assert " epochs of the data)" in card and "| epochs |" not in card and "100 epochs" not in card
    assert "AutoModel.from_pretrained('me/atto-run')" in card and "import videomac" in card
    cfg = json.loads((repo / "config.json").read_text())
    assert cfg["architecture"] == "videomac_cnxv2_atto" and cfg["num_features"] == 320
    # transformers passes num_classes itself: model_args must not repeat it (timm reads the root key)
    assert "num_classes" not in cfg.get("model_args", {}) and cfg["num_classes"] == 0
    assert "tag" not in cfg["pretrained_cfg"]  # not the registry's default tag: these are the run's weights
    cache = tmp_path / "cache"
    put_in_hf_cache(cache, "me/atto-run", {n: repo / n for n in os.listdir(repo)})
    ref = load_file(str(run / "encoder.safetensors"))
    out = run_py(
        f"""
        import json, timm, torch, videomac
        from safetensors.torch import load_file
        ref = load_file({str(run / "encoder.safetensors")!r})
        a = timm.create_model('hf-hub:me/atto-run', pretrained=True)
        b = timm.create_model('local-dir:{repo}', pretrained=True, num_classes=3)
        eq = lambda m: all(torch.equal(m.state_dict()[k], v) for k, v in ref.items())
        print(json.dumps(dict(a=eq(a), b=eq(b), b_out=list(b(torch.randn(1, 3, 64, 64)).shape))))
        """,
        dict(HF_HUB_CACHE=str(cache)),
    )
    assert out == dict(a=True, b=True, b_out=[1, 3])
    # the exported weights are the run's online encoder
    assert set(load_file(str(repo / "model.safetensors"))) == set(ref)
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "exp")]) == 0
    assert sha256_file(str(tmp_path / "exp" / "model.safetensors")) == sha256_file(str(repo / "model.safetensors"))


def test_no_published_weights_is_an_error_that_says_how():
    with pytest.raises(WeightsNotPublishedError, match=r"no published weights yet[\s\S]*videomac pretrain --preset"):
        timm.create_model("videomac_rn50.yt18_e100", pretrained=True)
    with pytest.raises(WeightsNotPublishedError, match="pretrained_cfg_overlay"):
        timm.create_model("videomac_cnxv2_femto", pretrained=True)
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("videomac_rn51")


def test_registry_is_the_source_of_pretrained_cfgs():
    entries = load_registry()
    assert {"videomac_rn50", "videomac_cnxv2_s"} <= {e.model for e in entries}
    for e in entries:
        cfg = timm.models.get_pretrained_cfg(e.name)
        assert cfg.num_classes == 0 and cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN
        assert cfg.input_size == (3, e.input_size, e.input_size)
        assert (cfg.hf_hub_id is not None) == e.published
    rn50 = next(e for e in entries if e.model == "videomac_rn50")
    assert rn50.metrics["DAVIS-2017 J&F"] == 67.2


# --- the authors' checkpoints ---------------------------------------------------------------------


def to_kernel(w: torch.Tensor) -> torch.Tensor:
    """Dense conv weight -> MinkowskiEngine kernel (k*k, C_in, C_out) (depthwise: (k*k, C))."""
    c_out, c_in, k, _ = w.shape
    kern = w.transpose(-1, -2).reshape(c_out, c_in, k * k).permute(2, 1, 0)
    return kern[:, 0, :] if c_in == 1 and k > 1 else kern


def test_kernel_orientation_matches_applying_the_stored_kernel_by_hand():
    torch.manual_seed(0)
    k, c_in, c_out = 3, 2, 4
    kernel = torch.randn(k * k, c_in, c_out)
    x = torch.randn(1, c_in, 5, 6)
    xp = F.pad(x, (1, 1, 1, 1))
    hand = torch.zeros(1, c_out, 5, 6)
    # MinkowskiEngine's 2-D kernel offsets: index = col_offset * k + row_offset
    for r in range(k):
        for c in range(k):
            hand += torch.einsum("bihw,io->bohw", xp[:, :, r : r + 5, c : c + 6], kernel[c * k + r])
    dense = kernel_to_dense(kernel, torch.Size((c_out, c_in, k, k)))
    torch.testing.assert_close(F.conv2d(x, dense, padding=1), hand)
    dw = torch.randn(k * k, 3)
    x3 = torch.randn(1, 3, 5, 6)
    hand = torch.zeros(1, 3, 5, 6)
    x3p = F.pad(x3, (1, 1, 1, 1))
    for r in range(k):
        for c in range(k):
            hand += x3p[:, :, r : r + 5, c : c + 6] * dw[c * k + r].view(1, 3, 1, 1)
    dense = kernel_to_dense(dw, torch.Size((3, 1, k, k)))
    torch.testing.assert_close(F.conv2d(x3, dense, padding=1, groups=3), hand)


def authors_layout(model) -> dict:
    """A VideoMAC ConvNeXt state_dict in the authors' sparse layout and names (ConvNeXt-V2 FCMAE names
    plus their stage norms ``norm{i}.ln.*``)."""
    sd, out = model.state_dict(), {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue  # their encoders have no pooled head norm
        if k.startswith("norm") and k[4].isdigit():  # MinkowskiLayerNorm after stage i
            out["encoder." + k.replace(".weight", ".ln.weight").replace(".bias", ".ln.bias")] = v
            continue
        k2 = k.replace("stem.", "downsample_layers.0.")
        k2 = k2.replace(".blocks.", ".").replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k2 = k2.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
        if ".downsample." in k2:
            i = k2.split(".")[1]
            k2 = k2.replace(f"stages.{i}.downsample.", f"downsample_layers.{i}.")
        if not k2.startswith("downsample_layers.0."):  # the stem stays dense in FCMAE
            if v.ndim == 4 and v.shape[-1] > 1:
                k2, v = k2.replace(".weight", ".kernel"), to_kernel(v)
            elif v.ndim == 4:
                k2, v = k2.replace(".weight", ".linear.weight"), v.flatten(1)
            elif "pwconv" in k2:
                k2 = k2.replace("pwconv1.", "pwconv1.linear.").replace("pwconv2.", "pwconv2.linear.")
            elif ".norm." in k2 or (k2.startswith("downsample_layers.") and k2.split(".")[2] == "0"):
                k2 = k2.replace(".weight", ".ln.weight").replace(".bias", ".ln.bias")
            if "grn" in k2 or (k2.endswith(".bias") and ("dwconv" in k2 or k2.split(".")[2] == "1")):
                v = v.reshape(1, -1)
        out["encoder." + k2] = v
    out.update(
        {
            "decoder.0.dwconv.kernel": torch.randn(49, 8),
            "proj.weight": torch.randn(8, 4),
            "pred.weight": torch.randn(4, 8),
            "mask_token": torch.zeros(1, 8),
        }
    )
    return out


@pytest.mark.parametrize("name", ["videomac_cnxv2_atto", "videomac_cnxv2_t"])
def test_convert_official_convnext(name, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    ck = {"online_without_ddp": authors_layout(model), "epoch": 99}
    torch.save(ck, tmp_path / "checkpoint-99.pth")
    out = tmp_path / "encoder.safetensors"
    assert main(["convert-official", str(tmp_path / "checkpoint-99.pth"), "--model", name, "--out", str(out)]) == 0
    sd = load_file(str(out))
    for k, v in model.state_dict().items():
        if not k.startswith("head.norm"):
            assert torch.equal(sd[k], v), k
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.randn(1, 3, 64, 64)
    model.head.norm.reset_parameters()
    torch.testing.assert_close(loaded.forward_features(x), model.eval().forward_features(x))


def test_convert_official_resnet_and_key_errors():
    torch.manual_seed(2)
    model = timm.create_model("videomac_rn18")
    sparse = {}
    for k, v in model.state_dict().items():
        if v.ndim == 4:
            sparse[k.replace(".weight", ".kernel")] = to_kernel(v) if v.shape[-1] > 1 else v.flatten(1).t()
        elif ".norm" in k or k.startswith("stem.1") or "downsample.1" in k:
            sparse[k.replace(".weight", ".ln.weight").replace(".bias", ".ln.bias")] = v
        else:
            sparse[k] = v.reshape(1, -1)
    ck = {"online_without_ddp": {f"encoder.{k}": v for k, v in sparse.items()}}
    sd, filled = convert_official(ck, "videomac_rn18")
    assert filled == []
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    broken = dict(ck["online_without_ddp"])
    broken.pop("encoder.layer1.0.conv1.kernel")
    broken["encoder.layer9.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unknown keys \['layer9.extra.weight'\]; missing keys \['layer1.0.conv1"):
        convert_official({"online_without_ddp": broken}, "videomac_rn18")


def test_hubconf_dependencies():
    text = (REPO / "hubconf.py").read_text()
    assert "dependencies = [" in text and '"timm"' in text and '"torch"' in text


def test_model_card_says_what_was_trained_not_what_was_planned():
    from videomac.hub import model_card

    model = timm.create_model("videomac_cnxv2_atto")
    cfg = dict(model="videomac_cnxv2_atto", epochs=100, max_steps=None, accum_iter=2, data="/data/k400/train")
    card = lambda progress: model_card(model, None, cfg, progress=progress)  # noqa: E731
    # steps_per_epoch recorded: 30 steps of 2 micro-batches into an epoch of 40 steps
    text = card(dict(step=30, epoch=0, micro_done=60, steps_per_epoch=40))
    assert "on train for 30 optimizer steps (0.75 epochs of the data)" in text
    # an earlier checkpoint without steps_per_epoch: the finished epochs give the epoch's length
    assert "(2.5 epochs of the data)" in card(dict(step=100, epoch=2, micro_done=40, steps_per_epoch=None))
    text = card(dict(step=1, epoch=0, micro_done=2, steps_per_epoch=None))  # not derivable: steps only
    assert "for 1 optimizer step. " in " ".join(text.split()) and "epochs of the data" not in text
    assert "for 100 epochs" in card(None)  # a model without a checkpoint: the config's plan
