"""``videomac propagate`` end to end on a real MP4 written by the test, its inputs and its errors."""

import json
import os

import av
import numpy as np
import pytest
from PIL import Image

from videomac.cli import main
from videomac.eval.annotations import read_mask
from videomac.eval.datasets import read_label_png
from videomac.eval.track import processing_size, propagate_video
from videomac.eval.video import FrameReader, VideoWriter
from videomac.synthetic import davis_palette, render_video, write_frames, write_palette_png, write_video

T, SIZE = 12, (96, 128)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    frames, labels = render_video(3, T, SIZE, 2)
    video = write_video(frames, str(d / "clip.mp4"))
    mask = write_palette_png(labels[0], str(d / "first.png"))
    return {"dir": d, "frames": frames, "labels": labels, "video": video, "mask": mask}


def mean_iou(pred, gt, ids):
    return float(np.mean([((pred == k) & (gt == k)).sum() / max(1, ((pred == k) | (gt == k)).sum()) for k in ids]))


def test_cli_end_to_end_beats_copying_the_first_mask(clip, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["propagate", clip["video"], "--mask", clip["mask"], "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["frames"] == T and printed["objects"] == [1, 2]
    pngs = sorted(os.listdir(out / "masks"))
    assert pngs == [f"{t:05d}.png" for t in range(T)]
    with Image.open(out / "masks" / pngs[3]) as im:
        assert im.mode == "P" and im.size == (SIZE[1], SIZE[0])
        assert np.array_equal(np.asarray(im.getpalette()[:30]), davis_palette()[:10].reshape(-1))
    pred = np.stack([read_label_png(str(out / "masks" / p)) for p in pngs])
    gt = clip["labels"]
    assert np.array_equal(pred[0], gt[0])
    prop = np.mean([mean_iou(pred[t], gt[t], [1, 2]) for t in range(1, T)])
    copy = np.mean([mean_iou(gt[0], gt[t], [1, 2]) for t in range(1, T)])
    assert prop > copy + 0.1, (prop, copy)
    with av.open(str(out / "overlay.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == T and decoded[0].shape == (*SIZE, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == T and summary["encoder"]["stride"] == 8


def test_frame_folder_binary_mask_and_downscaling(clip, tmp_path):
    frames_dir = tmp_path / "frames"
    write_frames(clip["frames"][:6], str(frames_dir), ext="png")
    binary = tmp_path / "binary.png"
    Image.fromarray(((clip["labels"][0] == 2) * 255).astype(np.uint8), mode="L").save(binary)
    s = propagate_video(str(frames_dir), str(binary), str(tmp_path / "out"), size=48, overlay=False, progress=False)
    assert s["frames"] == 6 and s["objects"] == [1] and s["processing_size"] == [48, 64]
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == [f"{t:05d}.png" for t in range(6)]
    lab = read_label_png(str(tmp_path / "out" / "masks" / "00005.png"))
    assert lab.shape == SIZE and set(np.unique(lab)) <= {0, 1}
    assert not (tmp_path / "out" / "overlay.mp4").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("size", "is 64x48 (WxH) but the video's first frame is 128x96"),
        ("empty", "has no objects"),
        ("missing", "video not found"),
        ("corrupt", "cannot read video"),
    ],
)
def test_errors_are_clear(clip, tmp_path, capsys, case, message):
    video, mask = clip["video"], clip["mask"]
    if case == "size":
        small = np.zeros((48, 64), np.uint8)
        small[8:24, 8:24] = 1  # one object on background 0
        mask = write_palette_png(small, str(tmp_path / "small.png"))
    elif case == "empty":
        mask = write_palette_png(np.zeros(SIZE, np.uint8), str(tmp_path / "empty.png"))
    elif case == "missing":
        video = str(tmp_path / "nope.mp4")
    else:
        video = str(tmp_path / "corrupt.mp4")
        with open(video, "wb") as f:
            f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    rc = main(["propagate", video, "--mask", mask, "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert message in capsys.readouterr().err
    with pytest.raises((ValueError, FileNotFoundError), match=message.split(" (")[0][:20]):
        propagate_video(video, mask, str(tmp_path / "o2"), progress=False)


def test_read_mask_formats(tmp_path):
    lab = np.zeros((8, 10), np.uint8)
    lab[1:3, 1:3], lab[5:7, 5:9], lab[0, 9] = 1, 3, 255
    write_palette_png(lab, str(tmp_path / "p.png"))
    expected = np.where(lab == 255, 0, lab)
    assert np.array_equal(read_mask(str(tmp_path / "p.png")), expected)  # indices kept, void -> 0
    Image.fromarray(expected).save(tmp_path / "gray.png")  # grayscale ids
    assert np.array_equal(read_mask(str(tmp_path / "gray.png")), expected)
    Image.fromarray(davis_palette()[expected]).save(tmp_path / "rgb.png")  # colour PNGs: refused, saying how
    with pytest.raises(ValueError, match="colour PNG .mode RGB.*indexed .palette. or 8-bit grayscale"):
        read_mask(str(tmp_path / "rgb.png"))


def test_processing_size_and_streaming_io(tmp_path):
    assert processing_size((272, 640), 480) == (272, 640)  # never upscaled
    assert processing_size((720, 1280), 480) == (480, 853)
    assert processing_size((720, 1280), (240, 320)) == (240, 320)
    assert processing_size((720, 1280), 0) == (720, 1280)
    frames = np.random.default_rng(0).integers(0, 255, (5, 33, 47, 3), dtype=np.uint8)
    with VideoWriter(str(tmp_path / "odd.mp4"), fps=10) as w:
        for f in frames:
            w.write(f)
    r = FrameReader(str(tmp_path / "odd.mp4"))
    assert r.size == (32, 46) and r.num_frames == 5  # yuv420p drops the odd row/column
    assert sum(1 for _ in r) == 5
