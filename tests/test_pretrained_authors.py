"""The authors' released checkpoints through ``pretrained=True``, torch.hub and the CLI, served by a real HTTP
server on 127.0.0.1 (no network): synthetic files in both of the authors' layouts (their raw pretraining
checkpoint and their tools/convert_pth.py output) are downloaded into torch.hub's cache, converted, and compute
the authors' forward (tests/authors_ref.py); failures are one line and leave nothing in the cache."""

import json
import os
import socket
from pathlib import Path

import pytest
import timm
import torch
from authors_ref import (
    authors_convert_pth,
    authors_convnext_forward,
    authors_resnet_forward,
    make_authors_convnext_state,
    make_authors_resnet_state,
)
from helpers import cached_files
from safetensors import safe_open

import videomac  # noqa: F401
from videomac.cli import main
from videomac.hub import model_card
from videomac.pretrained import WeightsDownloadError
from videomac.registry import find_entry, registry_path

REPO = Path(__file__).resolve().parents[1]
CNX = {
    "videomac_cnxv2_t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "videomac_cnxv2_s": ((3, 3, 27, 3), (96, 192, 384, 768)),
}
RN = {"videomac_rn18": 18, "videomac_rn50": 50}


def authors_state(name: str, seed: int):
    if name in RN:
        return make_authors_resnet_state(RN[name], seed=seed)
    depths, dims = CNX[name]
    return make_authors_convnext_state(2, depths, dims, seed=seed, decoder_dim=64)


def authors_forward(name: str, ck, x):
    if name in RN:
        return authors_resnet_forward(ck, x, RN[name])
    depths, dims = CNX[name]
    return authors_convnext_forward(ck, x, 2, depths, dims)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "name",
    [
        "videomac_rn18",
        pytest.param("videomac_rn50", marks=pytest.mark.slow),
        pytest.param("videomac_cnxv2_t", marks=pytest.mark.slow),
        pytest.param("videomac_cnxv2_s", marks=pytest.mark.slow),
    ],
)
def test_pretrained_true_downloads_converts_and_equals_the_authors_forward(name, server, tmp_path, capsys):
    entry = find_entry(name, tag="yt18_authors")
    assert entry.url == f"https://github.com/Video-MAC/VideoMAC/releases/latest/download/{entry.filename}"
    ck = authors_state(name, seed=3)
    server.put(entry.filename, ck)  # their raw pretraining checkpoint, at VIDEOMAC_WEIGHTS_BASE_URL
    server.put(f"dense/{entry.filename}", authors_convert_pth(ck))  # their tools/convert_pth.py output
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = authors_forward(name, ck, x)
        raw = timm.create_model(f"{name}.yt18_authors", pretrained=True).eval()
        assert rel(raw.forward_features(x), ref) < 1e-4
        dense = timm.create_model(
            f"{name}.yt18_authors",
            pretrained=True,
            pretrained_cfg_overlay=dict(url=f"{server.url}/dense/{entry.filename}"),
        ).eval()
        assert rel(dense.forward_features(x), ref) < 1e-4
    err = capsys.readouterr().err
    assert f"downloaded {server.url}/{entry.filename}" in err and "sha256 " in err
    files = cached_files(tmp_path)
    shas = [f for f in files if f.endswith(".sha256")]
    assert len(shas) == 2 and len([f for f in files if f.endswith(".safetensors")]) == 2
    assert all(f.startswith("hub/checkpoints/videomac/") for f in files)
    # the sha256 beside the download and in the converted file's metadata is the download's
    sidecar = (tmp_path / "torch" / shas[0]).read_text().split()[0]
    converted = [tmp_path / "torch" / f for f in files if f.endswith(".safetensors") and sidecar in f][0]
    with safe_open(str(converted), "pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == sidecar and meta["architecture"] == name
    # and in a model card made from the loaded model
    card = model_card(raw, None)
    digests = [(tmp_path / "torch" / f).read_text().split()[0] for f in shas]
    assert f"Converted from `{server.url}/{entry.filename}`, sha256 `" in card and any(d in card for d in digests)
    # the second load is the cache's: the server is gone
    server.stop()
    hits = len(server.hits)
    with torch.no_grad():
        again = timm.create_model(f"{name}.yt18_authors", pretrained=True).eval()
        assert rel(again.forward_features(x), ref) < 1e-4
    assert len(server.hits) == hits and "downloaded" not in capsys.readouterr().err


def test_torch_hub_load_takes_the_same_path(server, tmp_path):
    entry = find_entry("videomac_rn50", tag="yt18_authors")
    assert find_entry("videomac_rn50") is None or timm.models.get_pretrained_cfg("videomac_rn50").tag == "yt18_authors"
    ck = authors_state("videomac_rn50", seed=5)
    server.put(entry.filename, authors_convert_pth(ck))
    m = torch.hub.load(str(REPO), "videomac_rn50", source="local", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel(m.forward_features(x), authors_forward("videomac_rn50", ck, x)) < 1e-4
    assert server.hits == [entry.filename]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_failures_are_one_line_and_cache_nothing(server, tmp_path, monkeypatch, capsys):
    name, fn = "videomac_rn18.yt18_authors", "mac-r18-r0.75.pth"
    marker = tmp_path / "pwned"

    def truncated():
        server.put(fn, make_authors_resnet_state(18, seed=1))
        server.truncated.add(fn)

    def other_architecture():
        server.truncated.clear()
        server.put(fn, make_authors_resnet_state(50, seed=1))

    cases = [
        ("HTTP 404", None),  # nothing served yet
        ("cut short", truncated),  # Content-Length larger than the body
        ("not usable weights for videomac_rn18", other_architecture),
        ("posix.system", lambda: server.put(fn, {"online_without_ddp": {}, "x": Evil(str(marker))})),  # runs code
    ]
    for i, (expect, setup) in enumerate(cases):
        if setup:
            setup()
        with pytest.raises(WeightsDownloadError) as e:
            timm.create_model(name, pretrained=True)
        msg = str(e.value)
        assert expect in msg and "\n" not in msg, (i, msg)
        assert "convert-official FILE --model videomac_rn18" in msg and f"{server.url}/{fn}" in msg
        assert "--trust-pickle" not in msg
        assert cached_files(tmp_path) == [], (i, cached_files(tmp_path))
    assert not marker.exists()
    # server down
    monkeypatch.setenv("VIDEOMAC_WEIGHTS_BASE_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(WeightsDownloadError, match=r"could not download http://127\.0\.0\.1:\d+/mac-r18.*offline"):
        timm.create_model(name, pretrained=True)
    assert cached_files(tmp_path) == []
    # the CLI: exit 2, one line, no traceback
    out = tmp_path / "rn18.safetensors"
    capsys.readouterr()
    assert main(["convert-official", f"{server.url}/missing.pth", "--model", "videomac_rn18", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videomac convert-official: error:") and "HTTP 404" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_pinned_sha256_that_differs_is_refused(server, tmp_path, monkeypatch):
    doc = json.loads(Path(registry_path()).read_text())
    for e in doc["weights"]:
        if e["model"] == "videomac_rn18" and e["tag"] == "yt18_authors":
            e["sha256"] = "0" * 64
    pinned = tmp_path / "registry.json"
    pinned.write_text(json.dumps(doc))
    monkeypatch.setenv("VIDEOMAC_WEIGHTS_REGISTRY", str(pinned))
    server.put("mac-r18-r0.75.pth", make_authors_resnet_state(18, seed=2))
    with pytest.raises(WeightsDownloadError, match="sha256 mismatch .* pins 0{64}, the download has [0-9a-f]{64}"):
        timm.create_model("videomac_rn18.yt18_authors", pretrained=True)
    assert cached_files(tmp_path) == []


def test_convert_official_url_and_the_v1_v2_decision(server, tmp_path, capsys):
    ck = make_authors_convnext_state(1, (3, 3, 9, 3), (96, 192, 384, 768), seed=4, decoder_dim=64)  # ConvNeXt-V1
    server.put("mac-tiny-r0.75.pth", authors_convert_pth(ck))
    with pytest.raises(
        WeightsDownloadError,
        match=r"ConvNeXt-V1 encoder \(no GRN parameters\).*use --model "
        r"videomac_cnxv1_t",
    ):
        timm.create_model("videomac_cnxv2_t.yt18_authors", pretrained=True)
    assert cached_files(tmp_path) == []
    out = tmp_path / "v1.safetensors"
    url = f"{server.url}/mac-tiny-r0.75.pth"
    assert main(["convert-official", url, "--model", "videomac_cnxv1_t", "--out", str(out)]) == 0
    m = timm.create_model("videomac_cnxv1_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = authors_convnext_forward(ck, x, 1, (3, 3, 9, 3), (96, 192, 384, 768))
        assert rel(m.forward_features(x), ref) < 1e-4
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source_url"] == url and len(f.metadata()["source_sha256"]) == 64
