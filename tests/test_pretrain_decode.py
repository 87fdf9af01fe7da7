"""Video frames by seeking are exactly the frames a full decode gives: generated videos with the frame
number drawn in, B-frames, several GOPs, open GOPs, edit lists, variable frame rate, several containers."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from videomac.frames import FrameReader, SeekError, VideoIndex, probe_video
from videomac.pretrain.data import FramePairDataset
from videomac.synthetic import render_video

H, W, BITS = 64, 96, 8
H264 = "libx264" if "libx264" in av.codecs_available else None


def counter_frames(n, seed=0):
    """Rendered frames with the frame number drawn in binary as 8 blocks of 12 x 16 px in the top rows."""
    frames = render_video(seed, n, (H, W), num_objects=2)[0].copy()
    for t in range(n):
        for b in range(BITS):
            frames[t, :16, b * 12 : (b + 1) * 12] = 255 if (t >> b) & 1 else 0
    return frames


def read_counter(rgb):
    return sum(1 << b for b in range(BITS) if rgb[2:14, b * 12 + 2 : b * 12 + 10].mean() > 127)


def encode(path, frames, codec, pts=None, time_base=Fraction(1, 25), options=None, first_pts=0):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = s.codec_context.time_base = time_base
        if options:
            s.options = options
        for i, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts = first_pts + (i if pts is None else pts[i])
            fr.time_base = time_base
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def full_decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _videos(tmp_path):
    n = 40
    f = counter_frames(n)
    out = {}
    if H264:
        gop = "keyint=10:min-keyint=10:scenecut=0:bframes=3"
        out["h264_bframes_gop10.mp4"] = encode(tmp_path / "a.mp4", f, H264, options={"x264-params": gop})
        out["h264_open_gop.mkv"] = encode(tmp_path / "b.mkv", f, H264, options={"x264-params": gop + ":open-gop=1"})
        rng = np.random.default_rng(0)
        vfr = np.cumsum(rng.integers(20, 90, size=n)) - 20  # ms: a variable frame rate
        out["h264_vfr.mp4"] = encode(
            tmp_path / "c.mp4", f, H264, pts=vfr.tolist(), time_base=Fraction(1, 1000), options={"x264-params": gop}
        )
        out["h264_editlist.mp4"] = encode(tmp_path / "d.mp4", f, H264, first_pts=-3, options={"x264-params": gop})
        out["h264_vfr.mkv"] = encode(
            tmp_path / "e.mkv", f, H264, pts=vfr.tolist(), time_base=Fraction(1, 1000), options={"x264-params": gop}
        )
    out["mpeg4_bframes.mp4"] = encode(tmp_path / "f.mp4", f, "mpeg4", options={"bf": "2", "g": "8"})
    out["mpeg4_bframes.avi"] = encode(tmp_path / "g.avi", f, "mpeg4", options={"bf": "2", "g": "8"})
    return out


def test_generated_videos_are_what_they_claim(tmp_path):
    vids = _videos(tmp_path)
    for name, path in vids.items():
        frames = full_decode(path)
        counters = [read_counter(x) for x in frames]
        assert counters == list(range(counters[0], counters[0] + len(frames))), name  # readable, in order
        n, keys, hw = probe_video(path)
        assert n == len(frames) and hw == (H, W), name
        if "gop10" in name or "vfr" in name or "open" in name:
            assert len(keys) >= 4, name  # several GOPs
    if H264:
        with av.open(vids["h264_bframes_gop10.mp4"]) as c:
            assert c.streams.video[0].codec_context.has_b_frames
        idx = VideoIndex.read(vids["h264_vfr.mp4"])
        assert len(set(np.diff(idx.pts).tolist())) > 5  # really variable


@pytest.mark.parametrize("order", ["random", "ascending"])
def test_seeking_gives_the_full_decode_frames(tmp_path, order):
    rng = np.random.default_rng(1)
    for name, path in _videos(tmp_path).items():
        frames = full_decode(path)
        idx = VideoIndex.read(path)
        assert idx.num_frames == len(frames), name
        ks = list(range(len(frames)))
        if order == "random":
            ks = rng.permutation(len(frames)).tolist() + [len(frames) - 1, 0, 5, 4, 3]
        with FrameReader(path, idx) as reader:
            for k in ks:
                got = reader.read(k)
                assert np.array_equal(got, frames[k]), (name, k)  # exact frame identity
        with FrameReader(path) as reader:  # no index given: read on first use
            for k in (3, 7, 12, 30, 31):
                assert np.array_equal(reader.read(k), frames[k]), (name, k)
            assert reader.read(k, (H // 2, W // 2)).shape == (H // 2, W // 2, 3)  # area-resized on request


def test_without_timestamps_frames_are_counted_from_the_start(tmp_path):
    path = _videos(tmp_path)["mpeg4_bframes.avi"]
    frames = full_decode(path)
    idx = VideoIndex.read(path)
    idx.pts = None  # as for a stream whose packets carry no timestamps
    with FrameReader(path, idx) as reader:
        for k in (5, 6, 30, 2, len(frames) - 1):
            assert np.array_equal(reader.read(k), frames[k])
        assert reader.read(len(frames)) is None


def test_a_bad_seek_falls_back_to_counting(tmp_path, monkeypatch):
    path = _videos(tmp_path)["mpeg4_bframes.mp4"]
    frames = full_decode(path)
    d = FramePairDataset(path, input_size=(H, W), scale=(1, 1), ratio=(W / H, W / H), hflip=0)
    real = FrameReader._seek
    calls = []

    def broken(self, k, key):
        calls.append(k)
        raise SeekError("simulated")

    monkeypatch.setattr(FrameReader, "_seek", broken)
    a, b = d[20]  # the seek fails: the file is decoded from the start, counting frames
    monkeypatch.setattr(FrameReader, "_seek", real)
    assert calls and d.ctx.video_index(d.clips[0].path).pts is None
    assert torch.equal(a, torch.from_numpy(frames[20]).permute(2, 0, 1))
    assert torch.equal(b, torch.from_numpy(frames[21]).permute(2, 0, 1))


@pytest.mark.parametrize("units", [False, True])
def test_dataset_pairs_are_the_full_decode_frames(tmp_path, units):
    vids = _videos(tmp_path)
    paths = list(vids.values())
    d = FramePairDataset(
        paths,
        input_size=(H, W),
        gap=2,
        scale=(1, 1),
        ratio=(W / H, W / H),
        hflip=0,
        video_units=units,
        max_unit_pairs=7,
    )
    full = [full_decode(p) for p in paths]
    # units store frames downscaled (never below what any crop needs); at full-frame crops that is the
    # frame itself, so both modes give exactly the decoded frames
    order = list(range(len(d))) if units else np.random.default_rng(0).permutation(len(d)).tolist()
    for i in order:
        c, t = d.locate(i)
        a, b = d[i]
        assert read_counter(a.permute(1, 2, 0).numpy()) == read_counter(full[c][t])
        assert torch.equal(a, torch.from_numpy(full[c][t]).permute(2, 0, 1)), (paths[c], t)
        assert torch.equal(b, torch.from_numpy(full[c][t + 2]).permute(2, 0, 1)), (paths[c], t)
    if units:
        assert len(d.ctx.open_units) <= d.max_open_units
