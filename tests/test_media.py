"""videomac.media: one meaning of frame/video files, frame order and RGB conversion for every reader."""

import os

import numpy as np
import pytest
from PIL import Image

from videomac.eval.datasets import read_image
from videomac.eval.video import FrameReader
from videomac.media import image_to_rgb, is_video, list_frames, natural_key
from videomac.pretrain.data import FramePairDataset, VideoFileClip
from videomac.pretrain.decode import ImageFile
from videomac.pretrain.prepare import list_items
from videomac.synthetic import render_video, write_video


def test_16_bit_frames_become_the_same_8_bit_pixels_in_every_reader(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    folder = tmp_path / "deep"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "00000.png")
    Image.fromarray(ramp[:, ::-1].copy()).save(folder / "00001.png")
    with Image.open(folder / "00000.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
        got = image_to_rgb(im)
    want = ((ramp.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
    assert (got == want[..., None]).all()
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255 and (got == 255).mean() < 0.01
    # evaluation (was clipped to white), propagation and pretraining give those very pixels
    assert (read_image(str(folder / "00000.png")) == got).all()
    assert (next(iter(FrameReader(str(folder)))) == got).all()
    assert (ImageFile.read(str(folder / "00000.png")).decode() == got).all()


def test_odd_images_are_refused_with_the_path():
    with pytest.raises(ValueError, match=r"f\.tif: floating-point"):
        image_to_rgb(Image.fromarray(np.zeros((4, 4), np.float32)), "f.tif")
    with pytest.raises(ValueError, match="outside 0..65535"):
        image_to_rgb(Image.fromarray(np.full((4, 4), 70000, np.int32)), "big.png")
    rgba = Image.fromarray(np.full((2, 2, 4), 7, np.uint8))
    assert (image_to_rgb(rgba) == 7).all() and image_to_rgb(rgba).shape == (2, 2, 3)


def test_m4v_is_a_video_to_pretraining_prepare_and_propagation(tmp_path):
    frames = render_video(0, 6, (48, 64))[0]
    path = str(tmp_path / "videos" / "clip.M4V")
    write_video(frames, path)
    assert is_video(path)
    one = FramePairDataset(path, input_size=32)  # a video, not read as a text list
    assert one.source_kind == "video file" and isinstance(one.clips[0], VideoFileClip) and one.num_frames == 6
    folder = FramePairDataset(str(tmp_path / "videos"), input_size=32)
    assert folder.source_kind == "video files" and len(folder) == 5
    assert list_items(str(tmp_path / "videos")) == [("video", path, "clip.M4V")]
    assert sum(1 for _ in FrameReader(path)) == 6


def test_frames_are_listed_in_natural_order(tmp_path):
    for n in ["10.png", "9.png", "frame2.jpg", "frame10.jpg", "1.PNG", "notes.txt", "clip.mp4"]:
        (tmp_path / n).write_bytes(b"")
    names = [os.path.basename(p) for p in list_frames(str(tmp_path))]
    assert names == ["1.PNG", "9.png", "10.png", "frame2.jpg", "frame10.jpg"]
    assert sorted(["00010.jpg", "00002.jpg"], key=natural_key) == ["00002.jpg", "00010.jpg"]  # padded: as sorted
