"""Propagation inputs are read as meant (issue 29, case 9): a grey mask is binary only when 0 is one of
its two values, otherwise its values are object ids on background 0, and a mask without 0 is refused;
two files with one frame index (00001.jpg, 00001.png) are refused wherever a frame folder is listed.
Real CLI runs on real files; errors are one line and leave the inputs byte for byte as they were."""

import json
import os

import numpy as np
import pytest
from helpers import one_line_error, snapshot
from PIL import Image

from videomac.cli import main
from videomac.eval.annotations import read_mask
from videomac.pretrain.data import FramePairDataset
from videomac.synthetic import render_video, write_frames, write_palette_png

T, SIZE = 4, (48, 64)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    frames, labels = render_video(5, num_frames=T, size=SIZE, num_objects=2)
    write_frames(frames, str(d / "frames"))
    return d, labels


def grey(values_of, labels, path):
    """An 8-bit grayscale mask: label k of ``labels`` drawn as ``values_of[k]``."""
    Image.fromarray(np.asarray(values_of, np.uint8)[labels], mode="L").save(path)
    return str(path)


def propagate(frames, mask, out):
    return main(
        ["propagate", str(frames), "--mask", mask, "--out", str(out), "--size", "0", "--no-overlay", "--no-progress"]
    )


@pytest.mark.parametrize("values", [(3, 7, 7), (5, 8, 11)])
def test_a_grey_mask_without_background_is_refused(clip, tmp_path, capsys, values):
    d, labels = clip
    mask = grey(values, labels[0], tmp_path / "mask.png")
    before = snapshot(d) | snapshot(tmp_path)
    # before: {3, 7} read as binary (every pixel object 1); {5, 8, 11} tracked the background as object 5
    assert propagate(d / "frames", mask, tmp_path / "out") == 2
    shown = ", ".join(str(v) for v in sorted(set(values)))
    assert one_line_error(capsys.readouterr().err) == (
        f"videomac propagate: error: mask {mask} has no background: its values are {shown} and none is 0; "
        "object ids are 1..N on background 0 (a binary mask: 0 and one other value)"
    )
    assert snapshot(d) | snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_grey_values_are_ids_on_background_0_and_two_values_with_0_are_binary(clip, tmp_path, capsys):
    d, labels = clip
    lab0 = labels[0]
    assert set(np.unique(lab0)) == {0, 1, 2}
    ids = grey((0, 3, 7), lab0, tmp_path / "ids.png")
    assert np.array_equal(read_mask(ids), np.asarray([0, 3, 7], np.uint8)[lab0])
    assert propagate(d / "frames", ids, tmp_path / "out") == 0
    assert json.loads(capsys.readouterr().out)["objects"] == [3, 7]  # two objects, their own ids
    binary = grey((0, 200, 200), lab0, tmp_path / "binary.png")
    assert np.array_equal(read_mask(binary), (lab0 > 0).astype(np.uint8))
    assert propagate(d / "frames", binary, tmp_path / "out2") == 0
    assert json.loads(capsys.readouterr().out)["objects"] == [1]
    # an indexed mask without index 0 is refused too; with 0 it keeps its indices
    no_bg = write_palette_png(lab0 + 1, str(tmp_path / "p.png"))
    with pytest.raises(ValueError, match="has no background: its values are 1, 2, 3 and none is 0"):
        read_mask(no_bg)


def test_two_files_of_one_frame_index_are_refused_by_propagate(clip, tmp_path, capsys):
    d, labels = clip
    frames = tmp_path / "frames"
    write_frames(render_video(5, num_frames=T, size=SIZE)[0], str(frames))
    first = np.asarray(Image.open(frames / "00001.jpg"))
    Image.fromarray(first).save(frames / "00001.png")
    Image.fromarray(first).save(frames / "00001.bmp")
    Image.fromarray(first).save(frames / "00003.PNG")
    mask = write_palette_png(labels[0], str(tmp_path / "mask.png"))
    before = snapshot(tmp_path)
    # before: 6 frames, three of them written to masks/00001.png
    assert propagate(frames, mask, tmp_path / "out") == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"videomac propagate: error: {frames}: 2 frame index(es) held by more than one file "
        "(00001.bmp, 00001.jpg, 00001.png; 00003.PNG, 00003.jpg); keep one file per frame"
    )
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_two_files_of_one_frame_index_are_refused_by_eval_and_skipped_by_pretraining(clip, tmp_path, capsys):
    d, labels = clip
    root = tmp_path / "davis"
    seq = root / "JPEGImages" / "480p" / "bear"
    write_frames(render_video(5, num_frames=T, size=SIZE)[0], str(seq))
    for t, lab in enumerate(labels):
        write_palette_png(lab, str(root / "Annotations" / "480p" / "bear" / f"{t:05d}.png"))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    os.link(seq / "00002.jpg", seq / "00002.jpeg")
    before = snapshot(root)
    argv = ["eval", "davis", "--model", "resnet18", "--root", str(root), "--device", "cpu", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # eval says which encoder it built before it reads the dataset
    line = one_line_error("\n".join(x for x in err.splitlines() if not x.startswith("encoder: ")))
    assert (
        line.startswith("videomac eval: error: ")
        and (f"{seq}: 1 frame index(es) held by more than one file (00002.jpeg, 00002.jpg); keep one file per frame")
        in line
    ), line
    assert snapshot(root) == before and not (tmp_path / "out").exists()
    # pretraining: the folder is skipped with that reason, the others train
    other = tmp_path / "other"
    write_frames(render_video(6, num_frames=T, size=SIZE)[0], str(other))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{seq}\n{other}\n")
    with pytest.warns(UserWarning, match=r"skipped 1 unusable item\(s\) .*: bear \(1 frame index"):
        ds = FramePairDataset(str(listing), input_size=32)
    assert ds.num_videos == 1 and list(ds.skipped) == [str(seq)]
    assert "1 frame index(es) held by more than one file (00002.jpeg, 00002.jpg)" in ds.skipped[str(seq)]
    assert snapshot(root) == before
