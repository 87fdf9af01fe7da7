"""The libraries that consume timm backbones, each used as its own documentation says, on tiny inputs:
segmentation-models-pytorch (Unet, DeepLabV3+), Hugging Face transformers on a ``videomac export``
folder (AutoModel, AutoModelForImageClassification, pipeline, save_pretrained back into timm, a repo id
from the Hub cache), ONNX (legacy and dynamo exporters, run by onnxruntime), torch.export, and a
Lightning fine-tune with checkpoint reload. The clients are the ``dev`` extra's (CI installs them);
docs/integrations.md shows the same calls and the differences measured here."""

import json
import os
import subprocess
import sys
import textwrap

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file
from test_hub import put_in_hf_cache

import videomac  # noqa: F401  (registers the architectures with timm, which every client below uses)
from videomac.hub import export_folder

ENCODERS = ["videomac_cnxv2_atto", "videomac_rn18"]


def _report(what: str, diff: float) -> None:
    print(f"\n[integrations] {what}: max abs diff to eager {diff:.2e}")  # the figures in docs/integrations.md


# ----------------------------------------------------------------------------- segmentation-models-pytorch
@pytest.mark.parametrize("arch", ["Unet", "DeepLabV3Plus"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_smp_forward_backward(arch, encoder):
    torch.manual_seed(0)
    # DeepLabV3Plus asks the encoder for output_stride=16 (dilated last stage)
    model = getattr(smp, arch)(encoder_name=f"tu-{encoder}", encoder_weights=None, classes=3)
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    out = model(x)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    F.cross_entropy(out, target).backward()
    params = [(n, p) for n, p in model.encoder.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert params and not no_grad, f"encoder parameters without a finite gradient: {no_grad[:5]}"
    assert sum(float(p.grad.abs().sum()) for _, p in params) > 0
    if arch == "Unet":  # the smp encoder is timm's feature pyramid: the same weights give the same maps
        feats = timm.create_model(encoder, features_only=True)
        feats.load_state_dict(model.encoder.model.state_dict())
        mine = model.encoder(x)[-len(feats.feature_info) :]
        for a, b in zip(mine, feats(x)):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = timm.create_model("videomac_cnxv2_atto").eval()
    export_folder(model, str(tmp / "exp"), repo_id="me/atto")
    return model, tmp / "exp"


def test_transformers_loads_an_export_folder(exported, tmp_path):
    model, folder = exported
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_map, ref_pooled = model.forward_features(x), model(x)
        hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
        out = hf(pixel_values=x)
        assert torch.equal(out.last_hidden_state, ref_map) and torch.equal(out.pooler_output, ref_pooled)
        clf = transformers.AutoModelForImageClassification.from_pretrained(str(folder), num_labels=3).eval()
        assert clf(pixel_values=x).logits.shape == (1, 3)
        assert torch.equal(clf.timm_model.forward_features(x), ref_map)

        # the pipeline preprocesses as the folder's pretrained_cfg says (timm's eval transform)
        pipe = transformers.pipeline("image-feature-extraction", model=str(folder))
        img = Image.fromarray((np.random.default_rng(0).random((72, 96, 3)) * 255).astype("uint8"))
        got = pipe(img, return_tensors=True)
        cfg = timm.data.resolve_data_config({}, model=model)
        want = model.forward_features(timm.data.create_transform(**cfg)(img)[None])
        assert got.shape == want.shape == (1, 320, 7, 7)
        diff = float((got - want).abs().max())
        _report("transformers pipeline vs timm transform + forward_features", diff)
        assert diff < 1e-5

        # save_pretrained writes a folder timm loads back (local-dir:) with the same weights and outputs
        hf.save_pretrained(str(tmp_path / "hf"))
        clf.save_pretrained(str(tmp_path / "hf_clf"))
        back = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
        assert torch.equal(back(x), ref_pooled)
        back_clf = timm.create_model(f"local-dir:{tmp_path / 'hf_clf'}", pretrained=True).eval()
        assert back_clf.num_classes == 3 and torch.equal(back_clf(x), clf(pixel_values=x).logits)


def test_transformers_loads_an_export_with_a_classifier(tmp_path):
    """A fine-tuned model's export keeps its head: transformers takes num_labels from config.json."""
    torch.manual_seed(0)
    model = timm.create_model("videomac_rn18", num_classes=4).eval()
    export_folder(model, str(tmp_path / "exp"))
    clf = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "exp")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert clf.config.num_labels == 4 and torch.equal(clf(pixel_values=x).logits, model(x))


@pytest.mark.slow
def test_transformers_and_timm_load_a_repo_id_from_the_hub_cache(exported, tmp_path):
    """``hf-hub:me/atto`` (timm) and ``from_pretrained('me/atto')`` (transformers), offline, from the
    huggingface_hub cache laid out as a download leaves it."""
    model, folder = exported
    put_in_hf_cache(tmp_path / "cache", "me/atto", {n: folder / n for n in os.listdir(folder)})
    code = f"""
        import json, timm, torch, transformers, videomac
        from safetensors.torch import load_file
        ref = load_file({str(folder / "model.safetensors")!r})
        a = timm.create_model('hf-hub:me/atto', pretrained=True)
        b = transformers.AutoModel.from_pretrained('me/atto')
        same = lambda sd, prefix: all(torch.equal(sd[prefix + k], v) for k, v in ref.items())
        print(json.dumps(dict(timm=same(a.state_dict(), ''), hf=same(b.state_dict(), 'timm_model.'))))
        """
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == dict(timm=True, hf=True)
    assert set(load_file(str(folder / "model.safetensors"))) == set(model.state_dict())


# ----------------------------------------------------------------------------- ONNX, torch.export
@pytest.mark.parametrize("encoder", ENCODERS)
def test_onnx_legacy_exporter_runs_in_onnxruntime(encoder, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(encoder).eval()
    path = str(tmp_path / "model.onnx")
    x = torch.randn(1, 3, 64, 64)
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}},
    )
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x2 = torch.randn(2, 3, 96, 64)  # another batch and size than traced: the axes are dynamic
    with torch.no_grad():
        want = model(x2).numpy()
    got = sess.run(None, {"x": x2.numpy()})[0]
    diff = float(np.abs(got - want).max())
    _report(f"onnxruntime (legacy exporter) {encoder}", diff)
    assert got.shape == want.shape and diff < 1e-4


@pytest.mark.slow
def test_onnx_dynamo_exporter_runs_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("videomac_cnxv2_atto", features_only=True).eval()
    x = torch.randn(2, 3, 64, 64)  # batch 2: torch.export specializes a size-1 dimension
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(tmp_path / "model.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x2 = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = [f.numpy() for f in model(x2)]
    got = sess.run(None, {sess.get_inputs()[0].name: x2.numpy()})
    shapes = [(3, c, 64 // r, 64 // r) for c, r in zip((40, 80, 160, 320), (4, 8, 16, 32))]
    assert [g.shape for g in got] == [w.shape for w in want] == shapes
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    _report("onnxruntime (dynamo exporter) videomac_cnxv2_atto features_only", diff)
    assert diff < 1e-4


@pytest.mark.parametrize("encoder", ENCODERS)
def test_torch_export(encoder):
    torch.manual_seed(0)
    model = timm.create_model(encoder, features_only=True).eval()
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    x1 = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = ep.module()(x1), model(x1)
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    _report(f"torch.export {encoder} features_only", diff)
    assert len(got) == len(want) == 4 and diff < 1e-5


# ----------------------------------------------------------------------------- Lightning
class Classifier(L.LightningModule):
    def __init__(self, name: str = "videomac_rn18", num_classes: int = 3, lr: float = 1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = timm.create_model(name, num_classes=num_classes)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def test_lightning_fine_tune_and_checkpoint_reload(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0]))
    module = Classifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    assert trainer.global_step == 2
    ckpts = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".ckpt")]
    assert len(ckpts) == 1
    after = module.state_dict()
    assert not torch.equal(before["model.stem.0.weight"], after["model.stem.0.weight"])  # it trained
    back = Classifier.load_from_checkpoint(ckpts[0], map_location="cpu")
    assert back.hparams.name == "videomac_rn18"
    assert all(torch.equal(after[k], v) for k, v in back.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    module.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(module(x), back(x))


# ----------------------------------------------------------------------------- the page that shows them
@pytest.mark.slow  # about 25 s of CPU: it exports with both ONNX exporters and trains
def test_the_integrations_page_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every Python block of docs/integrations.md, in order, in one namespace and a fresh folder."""
    import re

    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "integrations.md")
    with open(page) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "integrations_page"}
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)
    out = capsys.readouterr().out
    assert "tensor(0.)" in out and "True" in out
    assert (tmp_path / "atto-export" / "config.json").exists() and namespace["trainer"].global_step == 2
    trained, reloaded = namespace["trainer"].model, namespace["reloaded"]
    assert torch.equal(reloaded.model.stem[0].weight.cpu(), trained.model.stem[0].weight)
