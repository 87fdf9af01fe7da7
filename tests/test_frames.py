"""videomac.frames: one frame reader for video files and frame folders, used by pretraining, eval/propagate
and visualize."""

import av
import numpy as np
import pytest

import videomac.eval.video
import videomac.pretrain.decode
from videomac.frames import FrameReader, SeekError, VideoIndex
from videomac.synthetic import render_video, write_frames, write_video

SIZE = (48, 64)


def _decode_all(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture
def sources(tmp_path):
    frames = render_video(0, 8, SIZE)[0]
    write_video(frames, str(tmp_path / "v.mp4"))
    write_frames(frames, str(tmp_path / "f"), ext="png")  # lossless: the folder holds the rendered frames
    video = str(tmp_path / "v.mp4")
    return {"video": (video, _decode_all(video)), "folder": (str(tmp_path / "f"), frames)}


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_one_reader_gives_every_frame_in_order_and_by_number(sources, kind):
    path, want = sources[kind]
    with FrameReader(path) as reader:
        assert reader.size == SIZE and reader.num_frames == len(want) and reader.fps > 0
        got = list(reader.indexed())
        assert [k for k, _ in got] == list(range(len(want)))
        assert all(np.array_equal(f, want[k]) for k, f in got)
        for k in (5, 2, 7, 0):  # by number, in any order
            assert np.array_equal(reader.read(k), want[k]), (kind, k)
        assert reader.read(len(want)) is None
        small = reader.read(3, (24, 32))  # resized on request (area filter)
        assert small.shape == (24, 32, 3) and abs(small.astype(float).mean() - want[3].mean()) < 3
        assert not reader.skipped


def test_pretraining_eval_and_decode_share_the_reader():
    assert videomac.eval.video.FrameReader is FrameReader is videomac.pretrain.decode.FrameReader


def test_a_given_index_opens_without_decoding_and_a_bad_seek_counts_from_the_start(sources, monkeypatch):
    path, want = sources["video"]
    idx = VideoIndex.read(path)
    assert idx.seekable
    with FrameReader(path, idx, threads=2) as reader:
        assert reader.size == SIZE and reader.num_frames == len(want)

        def broken(self, k, key):
            raise SeekError("simulated")

        monkeypatch.setattr(FrameReader, "_seek", broken)
        assert np.array_equal(reader.read(4), want[4])  # fell back to counting, in the same call
        assert idx.pts is None  # for good: the file's index now counts frames
        assert np.array_equal(reader.read(1), want[1])


def test_unreadable_frames_are_skipped_after_the_first(tmp_path):
    frames = render_video(1, 4, SIZE)[0]
    write_frames(frames, str(tmp_path / "f"), ext="png")
    (tmp_path / "f" / "00002.png").write_bytes(b"not a png")
    reader = FrameReader(str(tmp_path / "f"))
    with pytest.warns(UserWarning, match="skipping unreadable frame"):
        got = list(reader.indexed())
    assert [k for k, _ in got] == [0, 1, 3] and [p for p, _ in reader.skipped] == [str(tmp_path / "f" / "00002.png")]
    (tmp_path / "f" / "00000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="the mask belongs to it"):  # on opening, not a PIL error
        FrameReader(str(tmp_path / "f"))


def test_opening_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        FrameReader(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no frames"):
        FrameReader(str(tmp_path / "empty"))
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="cannot read video"):
        FrameReader(str(tmp_path / "junk.mp4"))
