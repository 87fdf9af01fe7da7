"""Synthetic videos and the frame-pair dataset, on real files written into tmp_path."""

import os
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from videomac.frames import FrameReader
from videomac.pretrain.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameFolderClip,
    FramePairDataset,
    VideoFileClip,
    normalize_frames,
    random_resized_crop_params,
)
from videomac.pretrain.decode import indexed_frames, probe_video
from videomac.synthetic import davis_palette, render_video, write_frames, write_palette_png, write_video

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _pixels(x):
    """[0, 1] pixels of an item: uint8 / 255, or normalized ones un-normalized."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    return x * STD + MEAN


def _full_decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _frames(seed=0, t=6, size=(48, 64)):
    return render_video(seed, t, size, num_objects=2)[0]


def _quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FramePairDataset(**kw)


# ------------------------------------------------------------------------------------------ synthetic
def test_render_video_deterministic_and_labelled():
    f, lab = render_video(7, 12, (64, 96), num_objects=3)
    assert f.shape == (12, 64, 96, 3) and f.dtype == np.uint8
    assert lab.shape == (12, 64, 96) and lab.dtype == np.uint8
    f2, lab2 = render_video(7, 12, (64, 96), num_objects=3)
    assert np.array_equal(f, f2) and np.array_equal(lab, lab2)
    f3, _ = render_video(8, 12, (64, 96), num_objects=3)
    assert not np.array_equal(f, f3)
    assert set(np.unique(lab[0])) == {0, 1, 2, 3}
    assert all(set(np.unique(lab[t])) == {0, 1, 2, 3} for t in range(12))  # objects stay visible
    assert all(np.abs(f[t].astype(int) - f[t + 1]).mean() > 0.5 for t in range(11))

    # The background is drawn first, so a render without objects is exactly the background: labels
    # must mark exactly the pixels where objects cover it.
    bg, bg_lab = render_video(7, 12, (64, 96), num_objects=0)
    assert bg_lab.max() == 0
    assert np.array_equal(f[lab == 0], bg[lab == 0])
    assert (np.abs(f.astype(int) - bg)[lab > 0].max(-1) > 0).mean() > 0.9

    # Camera pan: the same screen pixel shows different background content over time.
    still = (lab[0] == 0) & (lab[-1] == 0)
    assert (np.abs(bg[0].astype(int) - bg[-1])[still].max(-1) > 3).mean() > 0.5


def test_writers_roundtrip(tmp_path):
    f, lab = render_video(1, 5, (32, 48), num_objects=2)
    paths = write_frames(f, str(tmp_path / "jpg"))
    assert [os.path.basename(p) for p in paths] == [f"{i:05d}.jpg" for i in range(5)]
    assert np.abs(np.asarray(Image.open(paths[2])).astype(int) - f[2]).mean() < 8
    write_frames(f, str(tmp_path / "png"), ext="png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "00003.png")), f[3])

    write_video(f, str(tmp_path / "v.mp4"), fps=10)
    with av.open(str(tmp_path / "v.mp4")) as c:
        dec = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    assert len(dec) == 5 and dec[0].shape == (32, 48, 3)

    write_palette_png(lab[0], str(tmp_path / "a" / "00000.png"))
    im = Image.open(tmp_path / "a" / "00000.png")
    assert im.mode == "P" and np.array_equal(np.asarray(im), lab[0])
    assert im.getpalette()[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert davis_palette().shape == (256, 3)


# ------------------------------------------------------------------------------------------- sources
def test_synthetic_default_source():
    d = FramePairDataset(input_size=32, synthetic_videos=3, synthetic_frames=4, synthetic_size=(40, 48))
    assert d.num_videos == 3 and len(d) == 3 * 3 == d.num_pairs and d.source_kind == "synthetic"
    assert [d.locate(i) for i in range(9)] == [(v, t) for v in range(3) for t in range(3)]
    a, b = d[8]
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.uint8  # normalised on the device
    n = FramePairDataset(input_size=32, synthetic_videos=3, synthetic_frames=4, synthetic_size=(40, 48), normalize=True)
    torch.manual_seed(0)
    x = n[8][0]
    torch.manual_seed(0)
    assert x.dtype == torch.float32 and torch.allclose(x, normalize_frames(d[8][0]), atol=1e-6)
    assert "synthetic" in d.describe() and "3 videos" in d.describe() and "9 pairs/epoch" in d.describe()
    assert len(FramePairDataset(synthetic_videos=3, synthetic_frames=4, gap=2)) == 3 * 2
    d2 = FramePairDataset(input_size=(32, 48), pairs_per_video=4, synthetic_videos=2, synthetic_frames=3)
    assert len(d2) == 8 and d2[7][0].shape == (3, 32, 48)


@pytest.mark.parametrize("layout", ["plain", "JPEGImages", "JPEGImages/480p"])
def test_frame_folder_layouts(tmp_path, layout):
    root = tmp_path / "ds"
    base = root if layout == "plain" else root / layout
    write_frames(_frames(0), str(base / "vid_a"), ext="jpg")
    write_frames(_frames(1, t=3), str(base / "vid_b"), ext="png")
    (base / "notes.txt").write_text("ignored")
    d = FramePairDataset(str(root), input_size=32)
    assert d.num_videos == 2 and d.num_frames == 9 and not d.skipped
    assert sorted(c.name for c in d.clips) == ["vid_a", "vid_b"]
    a, b = d[1]
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8


def test_single_frame_folder_and_jpeg_extension(tmp_path):
    folder = _mk(tmp_path / "one")
    for i, f in enumerate(_frames(2, t=3)):
        Image.fromarray(f).save(folder / f"img_{i}.jpeg")
    d = FramePairDataset(str(folder), input_size=32)
    assert d.num_videos == 1 and d.source_kind == "frame folder" and d.num_frames == 3


def _mk(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_video_folder_and_single_video(tmp_path):
    write_video(_frames(0, t=8), str(tmp_path / "vids" / "a.mp4"))
    write_video(_frames(1, t=5), str(tmp_path / "vids" / "b.mp4"))
    d = FramePairDataset(str(tmp_path / "vids"), input_size=32)
    assert d.num_videos == 2 and d.num_frames == 13 and d.source_kind == "video files"
    a, b = d[0]
    assert a.shape == (3, 32, 32)
    # The pair must be two consecutive frames of the real video: visually close, not identical.
    assert 0 < (_pixels(a) - _pixels(b)).abs().mean() < 0.2

    one = FramePairDataset(str(tmp_path / "vids" / "a.mp4"), input_size=16, video_short_side=24)
    assert one.num_videos == 1 and one.num_frames == 8 and one.source_kind == "video file"
    assert one.clips[0].hw == (24, 32)  # frames downscaled before cropping
    assert one[0][0].shape == (3, 16, 16)


def test_text_list_source(tmp_path):
    write_frames(_frames(0, t=4), str(tmp_path / "data" / "f1"))
    write_video(_frames(1, t=6), str(tmp_path / "data" / "v.mp4"))
    lst = tmp_path / "data" / "list.txt"
    lst.write_text(f"# training videos\nf1\n\n  v.mp4  \n{tmp_path / 'data' / 'f1'}\nmissing_dir\n")
    with pytest.warns(UserWarning) as rec:
        d = FramePairDataset(str(lst), input_size=32)
    msgs = [str(w.message) for w in rec]
    assert any("missing_dir" in m for m in msgs)
    # f1 is listed twice (relative and absolute): used once, with a warning naming it
    assert any("1 video(s) more than once" in m and "f1" in m for m in msgs)
    assert d.num_videos == 2 and d.source_kind == "list file"
    assert list(d.skipped.values()) == ["not found"]
    assert {type(c) for c in d.clips} == {FrameFolderClip, VideoFileClip}
    for i in range(2):
        assert d[i][0].shape == (3, 32, 32)


# ------------------------------------------------------------------------------- epoch: every pair
def _solid_frames(v, n, size=(16, 16)):
    """``n`` frames, each one solid colour that encodes (video ``v``, frame ``t``)."""
    return np.stack([np.full((*size, 3), (40 * v, 10 * t, 128), np.uint8) for t in range(n)])


def _frame_id(x):
    r, g, _ = (_pixels(x)[:, 0, 0] * 255).round().int().tolist()
    return r // 40, g // 10


def _exact(source, size, gap=1, **kw):
    """Full-frame crop at the frame's own size and no flip: items are exactly the normalized frames."""
    h, w = size
    kw.setdefault("normalize", True)
    return _quiet(source=source, input_size=size, gap=gap, scale=(1, 1), ratio=(w / h, w / h), hflip=0.0, **kw)


def _normalized(frame):
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255.0
    return (x - MEAN) / STD


def _decoded_count(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _encode(path, frames, codec, first_pts=0, options=None, container_options=None):
    """Encode with PyAV; ``first_pts < 0`` makes the mp4 muxer write an edit list that discards frames."""
    h, w = frames.shape[1:3]
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if options:
            s.options = options
        for i, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts, fr.time_base = first_pts + i, Fraction(1, 25)
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.mark.parametrize("gap", [1, 2])
def test_every_pair_frame_folders(tmp_path, gap):
    lengths = {"a": 6, "b": 3, "c": 2, "d": 1, "e": 9}  # d gives no pair at gap 1, c and d none at gap 2
    for v, (name, n) in enumerate(lengths.items()):
        write_frames(_solid_frames(v, n), str(tmp_path / name), ext="png")
    d = _quiet(source=str(tmp_path), input_size=8, gap=gap)
    usable = [k for k, n in lengths.items() if n > gap]
    assert [c.name for c in d.clips] == usable
    assert set(d.skipped) == {str(tmp_path / k) for k in lengths if k not in usable}
    assert len(d) == d.num_pairs == sum(max(0, n - gap) for n in lengths.values()) == {1: 16, 2: 12}[gap]
    located = [d.locate(i) for i in range(len(d))]
    every = {(c, t) for c, k in enumerate(usable) for t in range(lengths[k] - gap)}
    assert len(set(located)) == len(located) and set(located) == every  # every pair exactly once
    assert located == sorted(located)  # videos in order, t ascending
    torch.manual_seed(0)
    for i, (c, t) in enumerate(located):
        v = list(lengths).index(d.clips[c].name)
        for _ in range(2):  # the same index is always the same pair
            a, b = d[i]
            assert _frame_id(a) == (v, t) and _frame_id(b) == (v, t + gap)
    with pytest.raises(IndexError):
        d[len(d)]


@pytest.mark.parametrize("gap", [1, 2])
def test_every_pair_video_files(tmp_path, gap):
    lengths = {"a.mp4": 7, "b.mp4": 4, "c.mp4": 2, "d.mp4": 1, "e.mp4": 12}
    for v, (name, n) in enumerate(lengths.items()):
        write_video(_frames(v, t=n), str(tmp_path / name))
    assert all(_decoded_count(tmp_path / k) == n for k, n in lengths.items())
    d = _exact(str(tmp_path), (48, 64), gap)
    usable = [k for k, n in lengths.items() if n > gap]
    assert [c.name for c in d.clips] == usable and d.source_kind == "video files"
    assert d.skipped[str(tmp_path / "d.mp4")] == f"1 frame < gap+1={gap + 1}"
    assert len(d) == sum(max(0, n - gap) for n in lengths.values()) == {1: 21, 2: 17}[gap]
    located = [d.locate(i) for i in range(len(d))]
    assert located == [(c, t) for c, k in enumerate(usable) for t in range(lengths[k] - gap)]
    full = [_full_decode(tmp_path / k) for k in usable]
    for units in (False, True):  # by seeking, and by units decoded forward
        d.video_units = units
        for i, (c, t) in enumerate(located):
            a, b = d[i]
            assert torch.allclose(a, _normalized(full[c][t]), atol=1e-5)
            assert torch.allclose(b, _normalized(full[c][t + gap]), atol=1e-5)


def test_frame_count_matches_full_decode(tmp_path):
    f = _frames(0, t=13, size=(48, 64))
    h264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    paths = [
        write_video(f, str(tmp_path / "v" / "a_h264.mp4")),
        _encode(tmp_path / "v" / "b_bframes.mp4", f, "mpeg4", options={"bf": "2"}),
        _encode(tmp_path / "v" / "c_editlist.mp4", f, h264, first_pts=-3),
        _encode(tmp_path / "v" / "d.mov", f, h264),
        _encode(tmp_path / "v" / "e.mkv", f, h264),
        _encode(tmp_path / "v" / "f.avi", f, "mpeg4", options={"bf": "2"}),
    ]
    if "libvpx-vp9" in av.codecs_available:
        paths.append(_encode(tmp_path / "v" / "g.webm", f, "libvpx-vp9"))
    decoded = [_decoded_count(p) for p in paths]
    assert decoded[2] == 10  # the edit list really drops 3 frames: container metadata still says 13
    with av.open(paths[2]) as c:
        assert c.streams.video[0].frames == 13
    for p, n in zip(paths, decoded):
        assert probe_video(p)[0] == n, p
        with av.open(p) as c:  # mp4 / mov from the sample index, the others by demuxing
            indexed = indexed_frames(c, c.streams.video[0], os.path.getsize(p))
        assert (indexed is not None) == p.endswith((".mp4", ".mov")), p
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "decoded n of m frames": every counted pair decodes
        d = FramePairDataset(str(tmp_path / "v"), input_size=16, gap=2)
        assert len(d) == sum(n - 2 for n in decoded) and not d.skipped
        for i in range(len(d)):
            d[i]

    # A truncated file's index points past its end: not trusted (counted by demuxing, checked on decode).
    full = _encode(tmp_path / "fs.mp4", f, h264, container_options={"movflags": "faststart"})
    data = open(full, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with av.open(str(cut)) as c:
        assert indexed_frames(c, c.streams.video[0], os.path.getsize(cut)) is None


def test_every_pair_list_single_and_synthetic(tmp_path):
    write_frames(_frames(0, t=5), str(tmp_path / "data" / "f1"))
    write_video(_frames(1, t=6), str(tmp_path / "data" / "v.mp4"))
    write_frames(_frames(2, t=2), str(tmp_path / "data" / "short"))
    lst = tmp_path / "data" / "list.txt"
    lst.write_text("f1\nv.mp4\nshort\n")
    assert len(FramePairDataset(str(lst), gap=1)) == 4 + 5 + 1
    assert len(_quiet(source=str(lst), gap=2)) == 3 + 4  # short: skipped
    assert len(FramePairDataset([str(tmp_path / "data" / "v.mp4"), str(tmp_path / "data" / "f1")])) == 5 + 4
    assert len(FramePairDataset(str(tmp_path / "data" / "v.mp4"), gap=3)) == 3
    assert len(FramePairDataset(str(tmp_path / "data" / "f1"), gap=3)) == 2
    syn = _exact(None, (40, 48), gap=2, synthetic_videos=2, synthetic_frames=5, synthetic_size=(40, 48))
    assert len(syn) == 2 * 3
    for i in range(len(syn)):
        c, t = syn.locate(i)
        assert (c, t) == (i // 3, i % 3)
        arr = syn.clips[c].frames(syn.ctx)
        assert torch.allclose(syn[i][1], _normalized(arr[t + 2]), atol=1e-5)


def test_pairs_per_video_option(tmp_path):
    write_frames(_solid_frames(0, 6), str(tmp_path / "a"), ext="png")
    write_frames(_solid_frames(1, 3), str(tmp_path / "b"), ext="png")
    d = FramePairDataset(str(tmp_path), input_size=8, pairs_per_video=3)
    assert len(d) == 2 * 3 and d.num_pairs == 5 + 2 and "3/video" in d.describe()
    assert [d.locate(i) for i in range(6)] == [(0, None), (1, None)] * 3
    torch.manual_seed(0)
    seen = {0: set(), 1: set()}
    for _ in range(40):
        for i in range(2):
            a, b = d[i]
            v, t = _frame_id(a)
            assert v == i and _frame_id(b) == (v, t + 1)
            seen[v].add(t)
    assert seen == {0: set(range(5)), 1: {0, 1}}  # random t over every valid start
    with pytest.raises(ValueError, match="pairs_per_video"):
        FramePairDataset(str(tmp_path), pairs_per_video=0)


@pytest.mark.parametrize("units", [False, True])
def test_video_decoding_fewer_frames_than_counted(tmp_path, monkeypatch, units):
    write_video(_frames(0, t=7), str(tmp_path / "a.mp4"))
    write_video(_frames(1, t=4), str(tmp_path / "b.mp4"))
    d = _exact(str(tmp_path), (48, 64), video_units=units)
    assert len(d) == 6 + 3
    real = FrameReader.read

    def short_a(self, k, size=None):  # a.mp4 counts 7 frames but only 3 decode
        return None if self.path.endswith("a.mp4") and k >= 3 else real(self, k, size)

    monkeypatch.setattr(FrameReader, "read", short_a)
    a_full, b_full = _full_decode(tmp_path / "a.mp4"), _full_decode(tmp_path / "b.mp4")
    b0 = _normalized(b_full[0])
    assert torch.allclose(d[0][0], _normalized(a_full[0]), atol=1e-5)
    assert torch.allclose(d[1][0], _normalized(a_full[1]), atol=1e-5)
    with pytest.warns(UserWarning, match="decoded 3 of 7 frames"):
        d[2]
    for i in range(2, 6):  # a's pairs past its decoded end: replaced by the next video's first pair
        assert torch.allclose(d[i][0], b0, atol=1e-5)
    assert torch.allclose(d[6][0], b0, atol=1e-5)


# --------------------------------------------------------------------------------- crop, flip, stats
def test_identical_frames_give_identical_outputs(tmp_path):
    f = _frames(3, t=1)[0]
    write_frames(np.stack([f, f]), str(tmp_path / "same"), ext="png")
    d = FramePairDataset(str(tmp_path / "same"), input_size=24, scale=(0.1, 1.0))
    torch.manual_seed(0)
    for _ in range(10):
        a, b = d[0]
        assert torch.equal(a, b)
    f = _frames(3, t=1, size=(480, 640))[0]
    write_frames(np.stack([f, f]), str(tmp_path / "same_jpg"))  # JPEG at a reduced DCT scale: alike too
    d = FramePairDataset(str(tmp_path / "same_jpg"), input_size=64)
    for _ in range(10):
        a, b = d[0]
        assert torch.equal(a, b)


def test_pair_shares_crop_and_flip_known_shift(tmp_path):
    s = 5
    base = render_video(4, 1, (64, 128), num_objects=2)[0][0]
    # frame2 is frame1 moved left by s pixels (the camera panned right).
    f1, f2 = base[:, :96], base[:, s : 96 + s]
    write_frames(np.stack([f1, f2]), str(tmp_path / "shift"), ext="png")
    # Area 2/3 of 64x96 with ratio 1 is exactly a 64x64 crop: no resize, so the comparison is exact.
    d = FramePairDataset(str(tmp_path / "shift"), input_size=64, scale=(2 / 3, 2 / 3), ratio=(1, 1))
    torch.manual_seed(1)
    seen = set()
    for _ in range(12):
        a, b = d[0]
        plain = torch.equal(b[..., : 64 - s], a[..., s:])
        flipped = torch.equal(b[..., s:], a[..., : 64 - s])
        assert plain != flipped  # exactly one: both frames got the same crop and the same flip
        seen.add(flipped)
    assert seen == {True, False}


def test_no_flip_and_crop_params():
    torch.manual_seed(0)
    for _ in range(50):
        i, j, h, w = random_resized_crop_params(60, 80, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= i and 0 <= j and i + h <= 60 and j + w <= 80
        assert 0.2 * 4800 * 0.8 <= h * w <= 4800 and 0.7 < w / h < 1.4
    assert random_resized_crop_params(10, 100, (0.9, 1.0), (1, 1)) == (0, 45, 10, 10)  # fallback


def test_normalization_stats(tmp_path):
    color = np.array([200, 100, 30], np.uint8)
    write_frames(np.broadcast_to(color, (3, 20, 30, 3)).copy(), str(tmp_path / "solid"), ext="png")
    d = FramePairDataset(str(tmp_path / "solid"), input_size=16, normalize=True)
    a, b = d[0]
    assert torch.equal(
        FramePairDataset(str(tmp_path / "solid"), input_size=16)[0][0],
        torch.tensor(color).view(3, 1, 1).expand(3, 16, 16),
    )
    expected = (torch.tensor(color / 255.0, dtype=torch.float32).view(3, 1, 1) - MEAN) / STD
    assert torch.allclose(a, expected.expand_as(a), atol=1e-5)
    assert torch.allclose(b, expected.expand_as(b), atol=1e-5)

    d = FramePairDataset(input_size=32, synthetic_videos=2, synthetic_frames=3, synthetic_size=(40, 48))
    px = _pixels(d[0][0])
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5


def test_gap(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 20 * t, np.uint8) for t in range(6)])
    write_frames(frames, str(tmp_path / "ramp"), ext="png")
    d = FramePairDataset(str(tmp_path / "ramp"), input_size=8, gap=3)
    assert len(d) == 3
    torch.manual_seed(0)
    for i in range(3):
        for _ in range(3):  # the same index is always the same pair: t = i
            a, b = d[i]
            diff = _pixels(b) - _pixels(a)
            assert torch.allclose(diff, torch.full_like(diff, 60 / 255), atol=1e-5)
            assert round(_pixels(a)[0, 0, 0].item() * 255) == 20 * i
    r = FramePairDataset(str(tmp_path / "ramp"), input_size=8, gap=3, pairs_per_video=1)
    firsts = {round(_pixels(r[0][0])[0, 0, 0].item() * 255) for _ in range(20)}
    assert firsts == {0, 20, 40}  # with pairs_per_video, t is drawn from all valid starts
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="gap\\+1=7"):
        FramePairDataset(str(tmp_path / "ramp"), gap=6)


def test_reproducible_under_manual_seed():
    d = FramePairDataset(input_size=32, synthetic_videos=3, synthetic_frames=5, synthetic_size=(40, 48))
    torch.manual_seed(123)
    first = [d[i] for i in range(3)]
    torch.manual_seed(123)
    again = [d[i] for i in range(3)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first, again))
    state = torch.get_rng_state()
    x = d[1]
    torch.set_rng_state(state)
    y = d[1]
    assert torch.equal(x[0], y[0])
    z = d[1]
    assert not torch.equal(x[0], z[0])


def test_dataloader_two_workers():
    d = FramePairDataset(
        input_size=32, pairs_per_video=4, synthetic_videos=2, synthetic_frames=4, synthetic_size=(40, 48)
    )
    loader = torch.utils.data.DataLoader(d, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    a, b = batches[0]
    assert a.shape == b.shape == (4, 3, 32, 32)
    # Workers have distinct RNG streams: the two batches differ although they cover the same videos.
    assert not torch.equal(batches[0][0], batches[1][0])


# ------------------------------------------------------------------------------------------ bad data
def test_corrupt_and_truncated_jpegs(tmp_path):
    root = tmp_path / "root"
    write_frames(_frames(0, t=3), str(root / "good"))
    write_frames(_frames(1, t=4), str(root / "noisy"))
    (root / "noisy" / "00002.jpg").write_bytes(np.random.default_rng(0).bytes(3000))  # not a JPEG at all
    paths = write_frames(_frames(2, t=2), str(root / "trunc"))
    data = open(paths[1], "rb").read()
    open(paths[1], "wb").write(data[: len(data) // 2])  # valid header, truncated body

    with pytest.warns(UserWarning, match="skipped 1 unusable") as rec:
        d = FramePairDataset(str(root), input_size=32)
    assert len([w for w in rec if "FramePairDataset" in str(w.message)]) == 1
    bad = str(root / "noisy" / "00002.jpg")
    assert list(d.skipped) == [bad] and "unreadable image" in d.skipped[bad]
    assert d.num_videos == 3 and d.num_frames == 3 + 3 + 2
    # No pair spans the unreadable frame: "noisy" keeps only (0, 1) of its 3 pairs.
    assert len(d) == 2 + 1 + 1
    noisy = [c.name for c in d.clips].index("noisy")
    assert [d.locate(i) for i in range(len(d)) if d.locate(i)[0] == noisy] == [(noisy, 0)]

    trunc_clip = [c.name for c in d.clips].index("trunc")
    trunc_index = [d.locate(i)[0] for i in range(len(d))].index(trunc_clip)
    with pytest.warns(UserWarning, match="00001.jpg: failed to decode"):
        a, b = d[trunc_index]  # replaced by the next index's pair
    assert a.shape == (3, 32, 32)
    assert paths[1] in d.skipped and len(d.skipped) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file: no second warning
        for _ in range(3):
            d[trunc_index]


def test_no_pair_spans_an_unreadable_frame(tmp_path):
    write_frames(_solid_frames(0, 5), str(tmp_path / "holes"), ext="png")
    for k in (1, 3):
        (tmp_path / "holes" / f"0000{k}.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="no two readable frames gap=1 apart"):
        with pytest.raises(ValueError, match="no usable videos"):
            FramePairDataset(str(tmp_path))  # frames 0, 2, 4 are readable but never 1 apart
    d = _quiet(source=str(tmp_path), input_size=8, gap=2)
    assert len(d) == 2 and [d.locate(i) for i in range(2)] == [(0, 0), (0, 2)]
    assert [(_frame_id(d[i][0]), _frame_id(d[i][1])) for i in range(2)] == [((0, 0), (0, 2)), ((0, 2), (0, 4))]


def test_truncated_and_one_frame_videos(tmp_path):
    vids = tmp_path / "vids"
    write_video(_frames(0, t=6), str(vids / "good.mp4"))
    write_video(_frames(1, t=10), str(vids / "cut.mp4"))
    data = (vids / "cut.mp4").read_bytes()
    (vids / "cut.mp4").write_bytes(data[: len(data) // 2])
    write_video(_frames(2, t=1), str(vids / "single.mp4"))
    (vids / "junk.webm").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="skipped 3") as rec:
        d = FramePairDataset(str(vids), input_size=32)
    assert len(rec) == 1
    assert d.num_videos == 1 and d.clips[0].name == "good.mp4"
    assert d.skipped[str(vids / "single.mp4")] == "1 frame < gap+1=2"
    assert d.skipped[str(vids / "cut.mp4")].startswith("unreadable")
    assert d.skipped[str(vids / "junk.webm")].startswith("unreadable")
    assert "3 skipped" in d.describe()
    assert d[0][0].shape == (3, 32, 32)


def test_truncated_faststart_mp4(tmp_path):
    # With the index at the front, a cut file can open and demux some packets that fail to decode:
    # then it is only found out at __getitem__ (replaced by the next video). Either way, one warning.
    frames = _frames(0, t=20, size=(64, 96))
    with av.open(str(tmp_path / "full.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    data = (tmp_path / "full.mp4").read_bytes()
    cut = _mk(tmp_path / "v") / "a_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    write_video(_frames(1, t=4), str(tmp_path / "v" / "b_good.mp4"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        d = FramePairDataset(str(tmp_path / "v"), input_size=32)
        for i in range(len(d)):
            for _ in range(2):
                assert d[i][0].shape == (3, 32, 32)
    assert str(cut) in d.skipped
    assert len(rec) == 1 and "a_cut.mp4" in str(rec[0].message)


def test_all_bad_empty_and_missing(tmp_path):
    vids = tmp_path / "bad"
    write_video(_frames(2, t=1), str(vids / "a.mp4"))
    _mk(vids / "b")
    Image.fromarray(_frames(3, t=1)[0]).save(vids / "b" / "0.png")
    msg = r"no usable videos under .*bad: 2 skipped \(b: 1 frame < gap\+1=2; a.mp4: 1 frame"
    with pytest.raises(ValueError, match=msg):
        _quiet(source=str(vids))
    _mk(tmp_path / "empty")
    with pytest.raises(ValueError, match="nothing found"):
        FramePairDataset(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="nope"):
        FramePairDataset(str(tmp_path / "nope"))


def test_a_video_listed_twice_trains_once_with_a_warning(tmp_path):
    write_frames(render_video(0, 5, (40, 48))[0], str(tmp_path / "a"))
    write_frames(render_video(1, 4, (40, 48))[0], str(tmp_path / "b"))
    lst = tmp_path / "train.txt"
    lst.write_text("a\nb\na/\n./a\n")
    with pytest.warns(UserWarning, match=r"lists 2 video\(s\) more than once; each is used once: a, a"):
        d = FramePairDataset(str(lst), input_size=32)
    assert [c.name for c in d.clips] == ["a", "b"] and len(d) == 4 + 3 and not d.skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct videos: no warning
        assert len(FramePairDataset([str(tmp_path / "a"), str(tmp_path / "b")], input_size=32)) == 7
