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
    with pytest.raises(ValueError, match="DST .* is inside the input"):
        prepare_dataset(str(src), str(src / "out"), progress=False)
    (src / "broken.mp4").write_bytes(b"\0" * 100)
    code = main(["prepare", str(src), str(tmp_path / "o"), "--short-side", "50", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "broken.mp4: failed" in out and '"done": 3' in out
    assert not [n for n in os.listdir(tmp_path / "o") if n.startswith(".partial")]


def test_prepare_scales_16_bit_frames_instead_of_clipping_them(tmp_path, capsys):
    # a 16-bit grey ramp: convert("RGB") clips every value above 255 to white
    ramp = np.linspace(0, 65535, 200 * 100).reshape(100, 200).astype(np.uint16)
    (tmp_path / "src" / "deep").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(ramp).save(tmp_path / "src" / "deep" / f"{k:05d}.png")
    assert Image.open(tmp_path / "src" / "deep" / "00000.png").mode.startswith("I")
    code = main(["prepare", str(tmp_path / "src"), str(tmp_path / "dst"), "--short-side", "50", "--no-progress"])
    assert code == 0, capsys.readouterr()
    out = np.asarray(Image.open(tmp_path / "dst" / "deep" / "00000.png"))
    assert out.shape == (50, 100, 3) and out.dtype == np.uint8
    eight = ((ramp.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    want = np.asarray(Image.fromarray(eight).resize((100, 50), Image.BICUBIC))
    assert np.abs(out[..., 0].astype(int) - want).max() <= 1
    assert (out == 255).mean() < 0.02 and 120 < out.mean() < 135  # a ramp, not 98% white


def test_prepare_refuses_items_that_would_share_a_destination(tmp_path, capsys):
    src = tmp_path / "src"
    frames = render_video(3, 4, (48, 64))[0]
    write_frames(frames, str(src / "clip"))
    write_video(frames, str(src / "clip.mp4"))
    with av.open(str(src / "clip.webm"), "w") as c:  # a real VP8/VP9 file, not a renamed mp4
        codec = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    write_frames(frames, str(src / "other"))
    code = main(["prepare", str(src), str(tmp_path / "dst"), "--short-side", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "clip/, clip.mp4, clip.webm -> clip" in err and "other" not in err
    assert not (tmp_path / "dst").exists() or not os.listdir(tmp_path / "dst")  # refused before writing
    # --videos mp4: the folder keeps its name, the two videos would both become clip.mp4
    code = main(["prepare", str(src), str(tmp_path / "dst"), "--videos", "mp4", "--no-progress"])
    assert code == 2 and "clip.mp4, clip.webm -> clip.mp4" in capsys.readouterr().err
    os.remove(src / "clip.webm")
    os.rename(src / "clip.mp4", src / "clip_video.mp4")
    code = main(["prepare", str(src), str(tmp_path / "dst"), "--short-side", "32", "--no-progress"])
    assert code == 0 and sorted(os.listdir(tmp_path / "dst")) == ["clip", "clip_video", "other"]
