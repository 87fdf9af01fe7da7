"""One validation layer for masks and annotations, the same in ``eval`` and ``propagate``: a real PNG
(by its bytes, not its name), indexed or 8-bit grayscale, of its frame's exact size; a video or
sequence listed twice is refused rather than scored twice. Everything through the CLI, in one line."""

import numpy as np
import pytest
from helpers import videomac_error_line as one_line_error
from PIL import Image

from videomac.cli import main
from videomac.eval.annotations import read_mask
from videomac.synthetic import render_video, write_frames, write_palette_png, write_video

SIZE = (64, 80)


def jpeg_named_png(labels, path):
    Image.fromarray((labels * 60).astype(np.uint8)).convert("RGB").save(path, format="JPEG", quality=75)
    return str(path)


@pytest.fixture
def davis(tmp_path):
    root = tmp_path / "davis"
    frames, labels = render_video(2, num_frames=4, size=SIZE, num_objects=2)
    write_frames(frames, str(root / "JPEGImages" / "480p" / "bear"))
    for t, lab in enumerate(labels):
        write_palette_png(lab, str(root / "Annotations" / "480p" / "bear" / f"{t:05d}.png"))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    return root, labels


def eval_davis(root, out):
    return main(
        [
            "eval",
            "davis",
            "--model",
            "resnet18",
            "--root",
            str(root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--overlay-frames",
            "0",
        ]
    )


def test_a_jpeg_named_png_is_refused_by_eval_and_propagate(davis, tmp_path, capsys):
    root, labels = davis
    ann = root / "Annotations" / "480p" / "bear"
    mask = jpeg_named_png(labels[0], tmp_path / "mask.png")
    with Image.open(mask) as im:  # the case reported: read as an image it holds dozens of "objects"
        assert len(np.unique(np.asarray(im.convert("L")))) > 20
    video = write_video(render_video(2, num_frames=4, size=SIZE, num_objects=2)[0], str(tmp_path / "clip.mp4"))
    assert main(["propagate", video, "--mask", mask, "--out", str(tmp_path / "p"), "--size", "0", "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "is a JPEG file, not a PNG" in line and mask in line
    jpeg_named_png(labels[2], ann / "00002.png")  # in the middle: found before any propagation
    assert eval_davis(root, tmp_path / "o") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "JPEG" in line and str(ann / "00002.png") in line
    assert not (tmp_path / "o" / "bear").exists()


def test_transposed_cropped_and_colour_annotations_are_refused(davis, tmp_path, capsys):
    root, labels = davis
    ann = root / "Annotations" / "480p" / "bear"
    for name, lab, message in (
        ("00001.png", labels[1].T.copy(), "looks transposed"),
        ("00002.png", labels[2][:48, :60], "looks cropped"),
    ):
        good = (ann / name).read_bytes()
        write_palette_png(lab, str(ann / name))
        assert eval_davis(root, tmp_path / "o") == 2
        line = one_line_error(capsys.readouterr().err)
        assert message in line and str(ann / name) in line
        (ann / name).write_bytes(good)
    # propagate: the same function, the same words
    frames = root / "JPEGImages" / "480p" / "bear"
    write_palette_png(labels[0].T.copy(), str(tmp_path / "t.png"))
    Image.fromarray(np.stack([labels[0] * 100] * 3, -1).astype(np.uint8)).save(tmp_path / "rgb.png")
    for mask, message in ((tmp_path / "t.png", "looks transposed"), (tmp_path / "rgb.png", "colour PNG (mode RGB)")):
        assert (
            main(
                [
                    "propagate",
                    str(frames),
                    "--mask",
                    str(mask),
                    "--out",
                    str(tmp_path / "p"),
                    "--size",
                    "0",
                    "--no-progress",
                ]
            )
            == 2
        )
        assert message in one_line_error(capsys.readouterr().err)
    Image.fromarray(np.stack([labels[3] * 100] * 3, -1).astype(np.uint8)).save(ann / "00003.png")
    assert eval_davis(root, tmp_path / "o") == 2
    assert "colour PNG (mode RGB)" in one_line_error(capsys.readouterr().err)


def test_grayscale_and_palette_masks_still_read(tmp_path):
    lab = np.zeros(SIZE, np.uint8)
    lab[4:20, 4:20], lab[30:40, 30:60] = 1, 2
    Image.fromarray((lab * 127).astype(np.uint8), mode="L").save(tmp_path / "g.png")  # 8-bit grayscale: values are ids
    assert np.array_equal(np.unique(read_mask(str(tmp_path / "g.png"))), [0, 127, 254])
    Image.fromarray(lab > 0).save(tmp_path / "b.png")  # 1-bit: one object
    assert np.array_equal(read_mask(str(tmp_path / "b.png")), (lab > 0).astype(np.uint8))
    write_palette_png(lab, str(tmp_path / "p.png"))
    assert np.array_equal(read_mask(str(tmp_path / "p.png")), lab)


def test_a_video_or_sequence_listed_twice_is_refused(davis, tmp_path, capsys):
    root, _ = davis
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n\nbear\n")
    assert eval_davis(root, tmp_path / "o") == 2
    assert "val.txt:3: sequence 'bear' is listed twice" in one_line_error(capsys.readouterr().err).replace("\\", "/")
    vip = tmp_path / "vip"
    frames, labels = render_video(3, num_frames=3, size=SIZE, num_objects=2)
    write_frames(frames, str(vip / "Images" / "v1"))
    write_palette_png(labels[0], str(vip / "Category_ids" / "v1" / "00000.png"))
    (vip / "val_videos.txt").write_text("v1\nv1\n")
    assert (
        main(
            [
                "eval",
                "vip",
                "--model",
                "resnet18",
                "--root",
                str(vip),
                "--out",
                str(tmp_path / "vo"),
                "--size",
                "64",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "val_videos.txt:2: video 'v1' is listed twice (first at line 1)" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--radius", "1e9"),
        ("--radius", "nan"),
        ("--n-context", "-1"),
        ("--topk", "0"),
        ("--temperature", "inf"),
        ("--batch-size", "0"),
        ("--stride", "0"),
        ("--device", "foo"),
    ],
)
def test_out_of_range_numeric_flags_are_one_line(davis, tmp_path, capsys, flag, value):
    root, _ = davis
    args = ["eval", "davis", "--model", "resnet18", "--root", str(root), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress", flag, value]) == 2
    assert flag in one_line_error(capsys.readouterr().err)
