"""``videomac prepare``: pre-resized copies, resumable, SRC untouched."""

import hashlib
import os

import av
import numpy as np
import pytest
from PIL import Image

from videomac.cli import main
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.decode import probe_video
from videomac.pretrain.prepare import prepare_dataset
from videomac.synthetic import render_video, write_frames, write_video


def _tree(root):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(p.encode() + open(p, "rb").read() + str(os.stat(p).st_mtime_ns).encode())
    return h.hexdigest()


def _src(tmp_path):
    src = tmp_path / "src"
    write_frames(render_video(0, 4, (120, 160))[0], str(src / "folder"))
    write_frames(render_video(1, 3, (40, 60))[0], str(src / "small"), ext="png")  # already small: copied
    write_video(render_video(2, 30, (120, 160))[0], str(src / "clip.mp4"))
    return src


def test_prepare_frames_and_videos(tmp_path):
    src = _src(tmp_path)
    before = _tree(src)
    dst = tmp_path / "dst"
    r = prepare_dataset(str(src), str(dst), short_side=60, progress=False)
    assert r == dict(done=3, skipped=0, failed={})
    assert _tree(src) == before  # SRC is only read
    assert sorted(os.listdir(dst)) == ["clip", "folder", "small"]
    assert Image.open(dst / "folder" / "00002.jpg").size == (80, 60)
    assert open(dst / "small" / "00001.png", "rb").read() == open(src / "small" / "00001.png", "rb").read()
    assert len(os.listdir(dst / "clip")) == 30 and Image.open(dst / "clip" / "00029.jpg").size == (80, 60)
    d = FramePairDataset(str(dst), input_size=32)
    assert d.num_videos == 3 and d.num_frames == 4 + 3 + 30

    # resumable: finished items are skipped, a half-written one (left by a kill) is redone
    os.rename(dst / "folder", dst / ".partial-folder")
    os.remove(dst / ".partial-folder" / "00003.jpg")
    r = prepare_dataset(str(src), str(dst), short_side=60, progress=False)
    assert r == dict(done=1, skipped=2, failed={})
    assert len(os.listdir(dst / "folder")) == 4 and not (dst / ".partial-folder").exists()


def test_prepare_short_gop_mp4(tmp_path):
    src = _src(tmp_path)
    dst = tmp_path / "mp4"
    r = prepare_dataset(str(src / "clip.mp4"), str(dst), short_side=60, videos="mp4", gop=8, progress=False)
    assert r["done"] == 1
    n, keys, hw = probe_video(str(dst / "clip.mp4"))
    assert n == 30 and hw == (60, 80) and keys == [0, 8, 16, 24]
    with av.open(str(dst / "clip.mp4")) as c:
        first = next(iter(c.decode(video=0))).to_ndarray(format="rgb24")
    frames = render_video(2, 30, (120, 160))[0]

    def diff(t):
        ref = np.asarray(Image.fromarray(frames[t]).resize((80, 60), Image.BILINEAR)).astype(int)
        return np.abs(first.astype(int) - ref).mean()

    assert diff(0) < 0.7 * min(diff(10), diff(20))  # the first frame, downscaled


def test_prepare_refuses_dst_inside_src_and_reports(tmp_path, capsys):
    src = _src(tmp_path)
    with pytest.raises(ValueError, match="outside SRC"):
        prepare_dataset(str(src), str(src / "out"), progress=False)
    (src / "broken.mp4").write_bytes(b"\0" * 100)
    code = main(["prepare", str(src), str(tmp_path / "o"), "--short-side", "50", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "broken.mp4: failed" in out and '"done": 3' in out
    assert not [n for n in os.listdir(tmp_path / "o") if n.startswith(".partial")]
