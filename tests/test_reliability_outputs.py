"""Outputs never overwrite inputs or runs, and push publishes exactly what it lists: eval/propagate
refuse an --out that is, lies in or contains the dataset (symlinks resolved); export/push refuse a run
folder or a dataset; push uploads only its allow-list (checked against a real HTTP server speaking the
Hub's commit API) and fails in one line when the Hub is unreachable."""

import base64
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
from helpers import run_cli_process, snapshot
from helpers import videomac_error_line as one_line_error

from videomac.cli import main
from videomac.hub import export_folder, push, upload_list
from videomac.synthetic import render_video, write_frames, write_palette_png

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 80)


def make_davis(root: Path, seqs=("bear",), frames=4):
    for i, seq in enumerate(seqs):
        video, labels = render_video(i, num_frames=frames, size=SIZE, num_objects=1)
        write_frames(video, str(root / "JPEGImages" / "480p" / seq))
        for t, lab in enumerate(labels):
            write_palette_png(lab, str(root / "Annotations" / "480p" / seq / f"{t:05d}.png"))
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{s}\n" for s in seqs))
    return root


def test_eval_and_propagate_refuse_an_out_folder_over_their_inputs(tmp_path, capsys):
    root = make_davis(tmp_path / "davis")
    before = snapshot(root)
    ann = root / "Annotations" / "480p"
    link = tmp_path / "innocent"
    os.symlink(ann / "bear", link)  # a link that leads into the ground truth
    base = [
        "eval",
        "davis",
        "--model",
        "resnet18",
        "--root",
        str(root),
        "--device",
        "cpu",
        "--no-progress",
        "--overlay-frames",
        "0",
    ]
    # the case reported: --out the annotation folder overwrote the ground truth, then scored J&F 1.0
    for out, how in ((ann, "is inside"), (root, "is the input"), (tmp_path, "contains"), (link, "is inside")):
        assert main(base + ["--out", str(out)]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert how in line and "--out" in line, line
    assert snapshot(root) == before
    # an annotation folder linked from elsewhere is protected too
    (tmp_path / "elsewhere").mkdir()
    (ann / "bear").rename(tmp_path / "elsewhere" / "bear")
    os.symlink(tmp_path / "elsewhere" / "bear", ann / "bear")
    before = snapshot(tmp_path / "davis") | snapshot(tmp_path / "elsewhere")
    assert main(base + ["--out", str(tmp_path / "elsewhere" / "bear" / "out")]) == 2
    assert str(tmp_path / "elsewhere" / "bear") in one_line_error(capsys.readouterr().err)
    # propagate: the frame folder and the mask are inputs
    frames = root / "JPEGImages" / "480p" / "bear"
    mask = tmp_path / "elsewhere" / "bear" / "00000.png"
    for out in (frames, frames / "out", tmp_path / "elsewhere"):
        argv = ["propagate", str(frames), "--mask", str(mask), "--out", str(out), "--size", "0", "--no-progress"]
        assert main(argv) == 2
        assert "--out" in one_line_error(capsys.readouterr().err)
    assert snapshot(tmp_path / "davis") | snapshot(tmp_path / "elsewhere") == before
    # a sibling folder is fine
    assert main(base + ["--out", str(tmp_path / "results")]) == 0
    assert "J&F-Mean" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert snapshot(tmp_path / "davis") | snapshot(tmp_path / "elsewhere") == before
    assert (tmp_path / "results" / "results.json").is_file()


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run: these tests only read it."""
    return tiny_run


def test_export_and_push_refuse_run_folders_and_datasets(run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "metrics.jsonl").write_text("")
    davis = make_davis(tmp_path / "davis", frames=3)
    for argv in (
        ["export", str(run_dir), "--out", str(run_dir)],  # the reported case: it replaced the run's config.json
        ["export", str(run_dir / "checkpoint.pt"), "--out", str(other)],
        ["export", str(run_dir), "--out", str(davis / "Annotations" / "480p")],
        ["push", str(run_dir), "--repo-id", "me/x", "--dry-run", "--folder", str(run_dir)],
        ["push", str(run_dir), "--repo-id", "me/x", "--dry-run", "--folder", str(davis)],
    ):
        assert main(argv) == 2, argv
        line = one_line_error(capsys.readouterr().err)
        assert "run folder" in line or "dataset" in line, line
    assert snapshot(run_dir) == before and (other / "config.json").read_text() == "{}"
    assert main(["export", str(run_dir), "--out", str(tmp_path / "fresh")]) == 0
    assert sorted(os.listdir(tmp_path / "fresh")) == ["README.md", "config.json", "model.safetensors"]


class HubServer(BaseHTTPRequestHandler):
    """The few Hub endpoints ``create_repo`` + ``create_commit`` call, recording the committed files."""

    commits: list = []

    def log_message(self, *a):
        pass

    def _json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/api/repos/create"):
            return self._json({"url": f"http://{self.headers['Host']}/me/pub", "name": "me/pub"})
        if self.path.startswith("/api/validate-yaml"):
            return self._json({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(data)["files"]
            return self._json(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in self.path:
            lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            HubServer.commits.append(files)
            url = f"http://{self.headers['Host']}/me/pub/commit/" + "a" * 40
            return self._json({"commitUrl": url, "commitOid": "a" * 40, "success": True})
        self._json({"error": self.path}, 404)


def test_push_uploads_exactly_the_dry_run_list_never_stale_files_or_links(run_dir, tmp_path, capsys):
    folder = tmp_path / "repo"
    folder.mkdir()
    # what a careless folder holds: a stale pickle, secrets, a link out, a link to a weights name
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04stale pickle")
    (folder / ".env").write_text("HF_TOKEN=secret\n")
    os.symlink("/etc/passwd", folder / "passwd")
    (folder / "notes.txt").write_text("local notes")
    assert main(["push", str(run_dir), "--repo-id", "me/pub", "--dry-run", "--folder", str(folder)]) == 0
    listed = json.loads(capsys.readouterr().out)["upload"]
    assert listed == ["README.md", "config.json", "model.safetensors"]
    # the list is checked file by file: a weights name that became a link is refused, not followed
    os.replace(folder / "README.md", tmp_path / "card.md")
    os.symlink(tmp_path / "card.md", folder / "README.md")
    with pytest.raises(ValueError, match="not a regular file"):
        upload_list(str(folder))
    with pytest.raises(ValueError, match="never a pickle"):
        upload_list(str(folder), ["pytorch_model.bin"])
    os.remove(folder / "README.md")
    # a real HTTP server on 127.0.0.1 answering the Hub API: what arrives is exactly the dry-run list
    from huggingface_hub import HfApi

    server = ThreadingHTTPServer(("127.0.0.1", 0), HubServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = HfApi(endpoint=f"http://127.0.0.1:{server.server_address[1]}", token="hf_test")
        s = push(str(run_dir), "me/pub", folder=str(folder), api=api)
    finally:
        server.shutdown()
    assert s["uploaded"] and s["upload"] == listed
    (files,) = HubServer.commits
    assert sorted(files) == listed
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_push_with_the_hub_unreachable_is_one_line(run_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_TOKEN="hf_test",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO),
    )
    r = run_cli_process("push", run_dir, "--repo-id", "me/pub", "--folder", tmp_path / "repo", env=env)
    assert r.code == 1
    line = one_line_error(r.err)
    assert f"127.0.0.1:{port}" in line and "HF_ENDPOINT" in line and str(tmp_path / "repo") in line


def test_export_writes_only_its_files_atomically(tmp_path):
    model = timm.create_model("videomac_cnxv2_atto")
    out = tmp_path / "exp"
    s = export_folder(model, str(out))
    assert s["files"] == ["README.md", "config.json", "model.safetensors"]
    assert sorted(os.listdir(out)) == s["files"]  # no temporaries, no pytorch_model.bin left behind


def test_model_card_escapes_every_user_value():
    import yaml

    from videomac.hub import model_card

    model = timm.create_model("videomac_cnxv2_atto")
    evil = "/home/alice/secret-project/clips\n---\nlicense: evil\n<script>alert(1)</script>"
    config = dict(
        data=evil,
        preset="x | <b>bold\n# Heading",
        model="videomac_cnxv2_atto",
        input_size=64,
        max_steps=1,
        lr="[click](javascript:alert(1))",
    )
    card = model_card(model, "me/atto", config)
    _, front, body = card.split("---\n", 2)  # the front matter is still exactly one block
    assert yaml.safe_load(front) == dict(
        library_name="timm",
        license="apache-2.0",
        tags=["image-feature-extraction", "timm", "videomac", "self-supervised"],
    )
    assert "/home/alice" not in card and "secret-project" not in card  # local paths: the last component only
    assert "<script>" not in card and "<b>" not in card and "&lt;b&gt;" in card
    assert "\\[click\\](javascript:alert(1))" in card and "x \\| &lt;b&gt;" in card
    headings = [ln for ln in body.splitlines() if ln.startswith("#")]
    assert headings == ["# me/atto", "## Pretraining recipe", "## Usage", "## Citation", "## License"]
    assert "on script&gt; for 1 optimizer step (preset x \\| &lt;b&gt;bold # Heading)" in card
    with pytest.raises(ValueError, match="ORG/NAME"):
        model_card(model, "me/x')\nimport os", config)
