"""videomac.pretrain.clips and .sources: clips read pairs given a ReadContext, never the dataset; the
dataset takes a ReadOptions or the same settings as keywords."""

import pytest
import torch

from videomac.pretrain.clips import ReadContext, ReadOptions, VideoFileClip
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.sources import find_clips, frames_root
from videomac.synthetic import render_video, write_frames, write_video


@pytest.fixture
def source(tmp_path):
    write_video(render_video(0, 10, (48, 64))[0], str(tmp_path / "data" / "v.mp4"))
    write_frames(render_video(1, 6, (48, 64))[0], str(tmp_path / "data" / "f"))
    return str(tmp_path / "data")


def _pairs(d, order):
    torch.manual_seed(0)
    return [d[i] for i in order]


def test_options_object_and_keywords_give_the_same_dataset(source):
    kw = dict(input_size=(32, 40), gap=2, scale=(0.5, 1.0), hflip=0.3, video_units=True)
    a = FramePairDataset(source, **kw)
    b = FramePairDataset(source, ReadOptions(**kw))
    c = FramePairDataset(source, ReadOptions(gap=2), input_size=(32, 40), scale=(0.5, 1.0), hflip=0.3, video_units=True)
    assert len(a) == len(b) == len(c) == (10 - 2) + (6 - 2)
    assert a.gap == 2 and a.input_size == (32, 40) and a.options == b.options == c.options
    for x, y, z in zip(_pairs(a, range(len(a))), _pairs(b, range(len(b))), _pairs(c, range(len(c)))):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], z[1])
    a.video_units = False  # settings set as attributes reach the clips (make_loader turns units on)
    assert a.options.video_units is False and "video_units" not in vars(a)
    with pytest.raises(ValueError, match="gap must be >= 1"):
        FramePairDataset(source, gap=0)
    with pytest.raises(TypeError, match="no_such_setting"):
        FramePairDataset(source, no_such_setting=1)


def test_clips_read_pairs_with_a_context_alone(source):
    """What the dataset does, without it: find the clips, read their pairs through a ReadContext."""
    options = ReadOptions(input_size=32, video_units=True, frame_units=True)
    skipped = {}
    kind, clips = find_clips(source, options.gap, None, skipped)
    assert kind == "frame folders and video files" and not skipped
    assert [type(c).__name__ for c in clips] == ["FrameFolderClip", "VideoFileClip"]
    ctx = ReadContext(options)
    d = FramePairDataset(source, options)
    torch.manual_seed(0)
    direct = [clip.read_pair(ctx, t) for clip in clips for t in range(clip.num_pairs)]
    assert all(x[0].shape == (3, 32, 32) and x[0].dtype == torch.uint8 for x in direct)
    via = _pairs(d, range(len(d)))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(direct, via))
    assert not ctx.open_units  # each unit's cursor closed after its last pair


def test_a_video_that_stops_decoding_is_recorded_once_in_the_context(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(render_video(2, 8, (48, 64))[0], str(path))
    ctx = ReadContext(ReadOptions(input_size=32))
    clip = VideoFileClip(str(path), 8, [0], (48, 64), 1)
    path.write_bytes(b"\0" * 64)  # gone bad after probing
    with pytest.warns(UserWarning, match="failed to decode"):
        assert clip.read_pair(ctx, 0) is None
    assert clip.dead and clip.lost(1) and list(ctx.skipped) == [str(path)]


def test_frames_root_finds_dataset_layouts(tmp_path):
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    assert frames_root(str(tmp_path)) == str(tmp_path / "JPEGImages" / "480p")
    assert frames_root(str(tmp_path / "JPEGImages" / "480p")) == str(tmp_path / "JPEGImages" / "480p")
