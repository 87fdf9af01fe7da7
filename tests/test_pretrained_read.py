"""One reader for every file given as weights or checkpoint (videomac.pretrained.load_checkpoint): the format is
taken from the bytes; anything that is not a checkpoint is one WeightsError "not a PyTorch checkpoint or
safetensors file: PATH" that never advises --trust-pickle; a real pickle that needs globals gets the advice
where the command offers the flag; safetensors files are checked from their header before any tensor is read;
downloads that are not checkpoints are never cached. Every route: the reader itself (all 256 first bytes), then
overlay file=, propagate --weights, pretrain --resume, export, visualize and convert-official on real files."""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from authors_ref import make_authors_resnet_state
from helpers import cached_files, run_cli_process
from PIL import Image
from safetensors.torch import save_file

import videomac  # noqa: F401
from videomac.cli import main
from videomac.pretrain.checkpoint import CheckpointError, UntrustedCheckpointError, load_checkpoint, write_checkpoint
from videomac.pretrained import WeightsDownloadError, WeightsError, download_cached
from videomac.pretrained import load_checkpoint as read_file
from videomac.registry import load_registry

ATTO = "videomac_cnxv2_atto"
NOT = "not a PyTorch checkpoint or safetensors file: "
TEXT = b"hello world, this is a text file that somebody gave as weights\n" * 3


class Evil:
    """A pickle that runs ``touch marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def digests(folder: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_first_byte_followed_by_text_is_one_error(tmp_path):
    """Text whose first byte is a pickle opcode (. M Q R a b e q r s t u, 0x81, 0x85-0x87) used to raise
    IndexError from inside torch.load; now every byte, trusted or not, is the one error without advice."""
    for trust in (False, True):
        for b in range(256):
            p = tmp_path / f"{b:03d}.pt"
            p.write_bytes(bytes([b]) + TEXT)
            with pytest.raises(WeightsError) as e:
                read_file(str(p), trust_pickle=trust)
            msg = str(e.value)
            assert msg.startswith(NOT + str(p)) and "\n" not in msg and "trust" not in msg, (b, msg)
            assert p.read_bytes() == bytes([b]) + TEXT


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(buf, "PNG")
    return buf.getvalue()


def _junk_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes/readme.txt", "a zip, not a checkpoint")
    return buf.getvalue()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _atto():
    return {k: v.clone() for k, v in timm.create_model(ATTO, num_classes=0).state_dict().items()}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Each case as ``<case>/checkpoint.pt`` in its own folder (what a user would pass to any route)."""
    root = tmp_path_factory.mktemp("bad")
    marker = root / "PWNED"
    real = _torch_bytes({"model": _atto(), "config": {"model": ATTO}})
    st = root / "st.safetensors"
    save_file({"x": torch.zeros(3)}, str(st))
    cases = {
        "text": b"." + TEXT,
        "html": b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>\n",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "png": _png(),
        "junk_zip": _junk_zip(),
        "truncated": real[: len(real) // 2],
        "safetensors": st.read_bytes(),
        "pickle_global": _torch_bytes({"model": {"x": torch.zeros(1)}, "payload": Evil(marker)}),
    }
    for name, data in cases.items():
        (root / name).mkdir()
        (root / name / "checkpoint.pt").write_bytes(data)
    st.unlink()
    return root, marker


NOT_A_CHECKPOINT = ["text", "html", "random", "png", "junk_zip", "truncated"]


def test_the_reader_table(bad_files):
    root, marker = bad_files
    before = digests(root)
    for case in NOT_A_CHECKPOINT:
        path = root / case / "checkpoint.pt"
        with pytest.raises(WeightsError) as e:
            read_file(str(path))
        assert str(e.value).startswith(NOT + str(path)) and "--trust-pickle" not in str(e.value), case
        assert "\n" not in str(e.value)
    assert "truncated or damaged" in _err(read_file, root / "truncated" / "checkpoint.pt")
    assert "starting b'\\x89PNG" in _err(read_file, root / "png" / "checkpoint.pt")
    # a safetensors file is read whatever its name; as a pretraining checkpoint it is refused, without advice
    assert list(read_file(str(root / "safetensors" / "checkpoint.pt"))) == ["x"]
    with pytest.raises(CheckpointError, match="is a safetensors weights file, not a videomac pretraining") as e:
        load_checkpoint(str(root / "safetensors"))
    assert "trust" not in str(e.value)
    # the real pickle: the advice, and nothing ran
    with pytest.raises(UntrustedCheckpointError, match="'posix.system'.*pass --trust-pickle"):
        read_file(str(root / "pickle_global" / "checkpoint.pt"))
    with pytest.raises(UntrustedCheckpointError, match="posix.system") as e:
        read_file(str(root / "pickle_global" / "checkpoint.pt"), trust_hint=False)
    assert "--trust-pickle" not in str(e.value)
    assert issubclass(UntrustedCheckpointError, WeightsError) and CheckpointError is WeightsError
    assert not marker.exists() and digests(root) == before


def _err(fn, path) -> str:
    with pytest.raises(WeightsError) as e:
        fn(str(path))
    return str(e.value)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from videomac.synthetic import render_video, write_frames

    root = tmp_path_factory.mktemp("clip")
    write_frames(render_video(1, num_frames=3, size=(64, 64))[0], str(root / "frames"))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 16:40] = 1
    Image.fromarray(mask).save(root / "mask.png")
    return root


TRUST_FLAG = {"resume", "export", "visualize", "convert"}  # the routes that offer --trust-pickle


def _route(route: str, ck: Path, clip: Path, out: Path) -> list:
    return {
        "weights": ["propagate", str(clip / "frames"), "--mask", str(clip / "mask.png"), "--out", str(out)]
        + ["--model", ATTO, "--weights", str(ck), "--no-progress", "--no-overlay"],
        "resume": ["pretrain", "--resume", str(ck), "--max-steps", "3", "--no-progress"],
        "export": ["export", str(ck), "--out", str(out)],
        "visualize": ["visualize", str(ck), str(clip / "frames"), "--out", str(out / "fig.png")],
        "convert": ["convert-official", str(ck), "--model", ATTO, "--out", str(out / "w.safetensors")],
    }[route]


@pytest.mark.parametrize("route", ["overlay", "weights", "resume", "export", "visualize", "convert"])
def test_every_route_gives_one_line_and_advice_only_for_a_real_pickle(route, bad_files, frames, tmp_path, capsys):
    root, marker = bad_files
    before = digests(root)
    for case in NOT_A_CHECKPOINT + ["safetensors", "pickle_global"]:
        ck = root / case / "checkpoint.pt"
        out = tmp_path / f"out-{case}"
        if route == "overlay":
            with pytest.raises(WeightsError) as e:
                timm.create_model(ATTO, pretrained=True, pretrained_cfg_overlay=dict(file=str(ck)))
            err, code = f"error: {e.value}", 2
        else:
            code = main(_route(route, ck, frames, out))
            err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1] if err else ""
        assert code == 2, (route, case, err)
        assert "Traceback" not in err and str(ck) in last, (route, case, err)
        if route != "resume":  # resume may warn about the other files it tried first
            assert len(err.splitlines()) == 1, (route, case, err)
        advice = "--trust-pickle" in err
        assert advice == (case == "pickle_global" and route in TRUST_FLAG), (route, case, err)
        if case in NOT_A_CHECKPOINT:
            assert NOT + str(ck) in last, (route, case, err)
        elif case == "pickle_global":
            assert "'posix.system'" in last, (route, case, err)
        elif route in ("resume", "export", "visualize"):
            assert "is a safetensors weights file, not a videomac pretraining checkpoint" in last, (route, err)
        else:  # a safetensors file is weights: refused for what it holds, not for its name
            what = "ConvNeXt-V1 encoder (no GRN" if route == "convert" else "unexpected keys: x"
            assert what in last, (route, err)
        assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), (route, case)
    assert not marker.exists() and digests(root) == before


@pytest.mark.slow
def test_a_real_process_exits_2_with_one_line(bad_files, frames, tmp_path):
    root, _ = bad_files
    ck = root / "text" / "checkpoint.pt"
    argv = _route("weights", ck, frames, tmp_path / "o")
    r = run_cli_process(*argv)
    expect = f"videomac propagate: error: {NOT}{ck} ({1 + len(TEXT)} bytes starting b'.hello world, th')"
    assert r.code == 2 and r.error_line() == expect, r.err


@pytest.mark.slow
def test_a_safetensors_file_with_wrong_keys_is_refused_before_its_tensors_are_read(tmp_path):
    """Case 10: keys and shapes come from the header. A 1.5 GB file (sparse: no disk) whose one tensor is not
    the model's is refused by a process whose peak memory stays far below the file's size."""
    size = 1536 << 20
    header = json.dumps({"big": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    path = tmp_path / "wrong.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
    os.truncate(path, 8 + len(header) + size)
    code = (
        "import sys, timm, videomac\n"
        "from videomac.pretrained import WeightsError\n"
        "try:\n"
        f"    timm.create_model({ATTO!r}, pretrained=True, pretrained_cfg_overlay=dict(file=sys.argv[1]))\n"
        "except WeightsError as e:\n"
        "    print(e)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would count the forking pytest's memory
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')) // 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    msg, peak_mb = r.stdout.strip().splitlines()
    assert "does not match the model" in msg and "unexpected keys: big" in msg, r.stdout + r.stderr
    assert int(peak_mb) < 1200, peak_mb  # about 700 here; reading the tensor alone would take 1536 MB more
    # a header whose dtype is not float is refused from the header too, naming the key
    sd = {k: v.half() for k, v in _atto().items()}
    sd["stem.0.weight"] = sd["stem.0.weight"].to(torch.int8)
    save_file(sd, str(tmp_path / "int8.safetensors"))
    with pytest.raises(WeightsError, match=r"stem\.0\.weight is int8, expected floating point"):
        timm.create_model(ATTO, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "int8.safetensors")))


def test_a_decoder_tensor_of_the_wrong_shape_is_named(tiny_run_copy, tmp_path, frames, capsys):
    out = tiny_run_copy  # a finished 2-step run of helpers.TINY (decoder_dim 32)
    ck = load_checkpoint(str(out))
    key = "online.decoder.pred.weight"
    ck["model"][key] = ck["model"][key][:1].contiguous()
    write_checkpoint(ck, str(out), keep=1)  # a valid digest: only the shape is wrong
    before = digests(out)
    for argv in (
        ["visualize", str(out), str(frames / "frames"), "--out", str(tmp_path / "fig.png")],
        ["pretrain", "--resume", str(out), "--max-steps", "3", "--no-progress"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert key in err.splitlines()[-1] and "1, 32, 1, 1" in err and "Traceback" not in err, err
    lock = str(out / "videomac.lock")  # records who held the run last; the run's files are unchanged
    assert {k: v for k, v in digests(out).items() if k != lock} == {k: v for k, v in before.items() if k != lock}
    assert not (tmp_path / "fig.png").exists()


# ------------------------------------------------------------------------------------------- downloads


NAME, FILE = "videomac_rn18.yt18_authors", "mac-r18-r0.75.pth"


def test_a_download_that_is_no_checkpoint_is_never_cached(server, tmp_path, capsys):
    good = _torch_bytes(make_authors_resnet_state(18, seed=1))
    passwd = b"root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\n"
    for body, length in [
        (b"<html><body>proxy error</body></html>", None),  # a proxy's error page with 200
        (passwd, None),
        (b"Me and my text", None),  # first byte 'M': BININT2, used to be IndexError
        (b"<html>login</html>", "abc"),  # a Content-Length that is no number: one line, not int()'s error
    ]:
        server.files[FILE] = body
        if length is not None:
            server.lengths[FILE] = length
        with pytest.raises(WeightsDownloadError) as e:
            timm.create_model(NAME, pretrained=True)
        msg = str(e.value)
        assert "not a PyTorch checkpoint or safetensors file; nothing was cached" in msg and "\n" not in msg, msg
        assert "int()" not in msg and "--trust-pickle" not in msg and cached_files(tmp_path) == []
    # the same through convert-official: exit 2, one line, nothing cached, no output
    out = tmp_path / "w.safetensors"
    capsys.readouterr()
    assert main(["convert-official", f"{server.url}/{FILE}", "--model", "videomac_rn18", "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("videomac convert-official: error:") and "nothing was cached" in last
    assert not out.exists() and cached_files(tmp_path) == []
    # the server is fixed (and still sends a bad Content-Length): the next load succeeds
    server.files[FILE] = good  # still with Content-Length: abc
    timm.create_model(NAME, pretrained=True)
    assert len([f for f in cached_files(tmp_path) if f.endswith(".sha256")]) == 1


def test_a_poisoned_cache_from_an_older_version_is_dropped(server, tmp_path, capsys):
    good = _torch_bytes(make_authors_resnet_state(18, seed=2))
    server.files[FILE] = good
    url = f"{server.url}/{FILE}"
    # what an older videomac left: the error page cached with its .sha256
    path, _ = download_cached(url, FILE, what=NAME)
    Path(path).write_bytes(b"<html>502</html>")
    Path(path + ".sha256").write_text(hashlib.sha256(b"<html>502</html>").hexdigest() + f"  {FILE}\n")
    timm.create_model(NAME, pretrained=True)
    assert Path(path).read_bytes() == good
    # a cached body that reads as a torch file but is no checkpoint: the failed load removes it with its .sha256
    Path(path).write_bytes(b"PK\x03\x04" + b"junk" * 100)
    Path(path + ".sha256").write_text("0" * 64 + f"  {FILE}\n")
    capsys.readouterr()
    out = tmp_path / "w.safetensors"
    assert main(["convert-official", url, "--model", "videomac_rn18", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videomac convert-official: error: " + NOT + path) and len(err.splitlines()) == 1, err
    assert "--trust-pickle" not in err
    assert not os.path.exists(path) and not os.path.exists(path + ".sha256")
    assert main(["convert-official", url, "--model", "videomac_rn18", "--out", str(out)]) == 0 and out.exists()


def test_urls_and_file_names_that_leave_the_cache_are_refused(server, tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for url, filename, expect in [
        ("file:///etc/passwd", None, r"is not an http\(s\) URL"),
        (f"{server.url}/{FILE}", "../../../../victim.txt", "is not a plain file name"),
        (f"{server.url}/{FILE}", "/etc/passwd", "is not a plain file name"),
    ]:
        with pytest.raises(WeightsDownloadError, match=expect) as e:
            download_cached(url, filename, what=NAME)
        assert "\n" not in str(e.value)
    with pytest.raises(WeightsDownloadError, match="'file:///etc/passwd' is not an http"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url="file:///etc/passwd"))
    assert victim.read_text() == "precious" and cached_files(tmp_path) == []
    # the registry refuses such entries, naming the entry and field
    base = dict(model="videomac_rn18", tag="t", format="authors", url="https://example.org/a.pth", filename="a.pth")
    for entry, pattern in [
        (dict(base, filename="../../victim.txt"), r"field 'filename' is '\.\./\.\./victim\.txt', expected a plain"),
        (dict(base, filename="/abs/x.pth"), "expected a plain file name"),
        (dict(base, filename=".."), "expected a plain file name"),
        (dict(base, url="file:///etc/passwd"), r"field 'url' is 'file:///etc/passwd', expected an http\(s\) URL"),
        (dict(base, url="ftp://host/a.pth"), "expected an http"),
    ]:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"weights": [entry]}))
        with pytest.raises(ValueError, match=pattern):
            load_registry(str(path))
