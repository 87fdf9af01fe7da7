"""Bad inputs are skipped and counted, never fatal, never silent (items 7-10); degenerate settings get a
clear error (items 11, 13). Items 2 and 12 (names leaving --out; DAVIS sequences with nothing to score)
are tests/test_eval_davis_layouts.py."""

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from helpers import videomac_error_line as one_line_error
from PIL import Image

from videomac.cli import main
from videomac.eval.video import FrameReader
from videomac.masking import random_mask
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.data import MAX_FULL_DECODE_PIXELS, FramePairDataset
from videomac.pretrain.train import pretrain
from videomac.synthetic import render_video, write_frames, write_palette_png

SIZE = (64, 80)


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])  # the header still parses: it fails only when decoded


@pytest.mark.slow
def test_bad_inputs_are_skipped_counted_and_reported_by_a_run(tmp_path):
    """Items 7, 9, 10 in one real run: a truncated JPEG in the only usable video, a FIFO named .mp4, a
    one-frame folder and an 8000x8000 PNG; the run trains, and summary.json / metrics say what it skipped."""
    data = tmp_path / "data"
    frames, _ = render_video(1, num_frames=8, size=SIZE)
    paths = write_frames(frames, str(data / "clip"))
    truncate(paths[3])  # used to discard the whole video: "no decodable video left"
    write_frames(frames[:1], str(data / "single"))
    huge = data / "huge"
    write_frames(frames[:2], str(huge), ext="png")
    Image.new("L", (8000, 8000), 128).save(huge / "00002.png")  # 64 MP: seconds and GBs per pair
    os.mkfifo(data / "stream.mp4")  # opening it used to block dataset construction forever
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "videomac.cli",
        "pretrain",
        "--data",
        str(data),
        "--model",
        "videomac_cnxv2_atto",
        "--input-size",
        "64",
        "--batch-size",
        "2",
        "--decoder-dim",
        "32",
        "--max-steps",
        "3",
        "--log-every",
        "1",
        "--num-workers",
        "2",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - t0 < 200
    summary = json.loads((out / "summary.json").read_text())
    skipped = summary["skipped"]
    assert summary["skipped_count"] == len(skipped) >= 4
    assert "failed to decode" in skipped[paths[3]]  # met by a DataLoader worker, counted by the run
    assert "not a regular file" in skipped[str(data / "stream.mp4")]
    assert "1 frame < gap+1" in skipped[str(data / "single")]
    assert f"above the {MAX_FULL_DECODE_PIXELS / 1e6:g} MP limit" in skipped[str(huge / "00002.png")]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == len(skipped) and all("skipped" in r for r in rows)
    assert f"skipped {len(skipped)} unusable input(s)" in proc.stderr


@pytest.mark.slow
def test_a_fifo_source_or_frame_does_not_hang(tmp_path):
    code = (
        "import os, sys\n"
        "from videomac.pretrain.data import FramePairDataset\n"
        "d = sys.argv[1]\n"
        "try:\n"
        "    FramePairDataset(os.path.join(d, 'pipe.mp4'))\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "ds = FramePairDataset(os.path.join(d, 'frames'), input_size=32)\n"
        "print(len(ds), sorted(os.path.basename(p) for p in ds.skipped))\n"
    )
    frames, _ = render_video(2, num_frames=4, size=SIZE)
    write_frames(frames, str(tmp_path / "frames"))
    os.mkfifo(tmp_path / "pipe.mp4")
    os.mkfifo(tmp_path / "frames" / "00002a.jpg")  # a FIFO among the frames
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "refused:" in p.stdout and "not a regular file or a folder" in p.stdout
    assert "['00002a.jpg']" in p.stdout


def test_16_bit_frames_are_scaled_not_clipped(tmp_path):
    d = tmp_path / "frames16"
    d.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (64, 1))
    for t in range(3):
        Image.fromarray(ramp).save(d / f"{t:05d}.png")
    assert Image.open(d / "00000.png").mode == "I;16"
    # convert("RGB") used to clip: every pixel above 255 of 65535 became white
    assert (np.asarray(Image.open(d / "00000.png").convert("RGB")) == 255).mean() > 0.95
    frames = list(FrameReader(str(d)))
    np.testing.assert_allclose(frames[0][..., 0].astype(float), ramp / 257.0, atol=1)
    ds = FramePairDataset(str(d), input_size=(64, 80), scale=(1.0, 1.0), ratio=(1.25, 1.25), hflip=0.0)
    f1, _ = ds[0]
    f1 = f1.float() if f1.dtype == torch.uint8 else f1
    assert 0.3 < (f1 - f1.min()).mean() / (f1.max() - f1.min()) < 0.7  # a ramp, not a white frame


def test_propagate_skips_unreadable_frames_and_names_them(tmp_path, capsys):
    frames, labels = render_video(4, num_frames=6, size=SIZE, num_objects=1)
    paths = write_frames(frames, str(tmp_path / "v"))
    truncate(paths[2])
    with open(paths[4], "wb") as f:
        f.write(b"not an image")  # PIL: UnidentifiedImageError
    mask = write_palette_png(labels[0], str(tmp_path / "mask.png"))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipping unreadable frame"):
        rc = main(
            [
                "propagate",
                str(tmp_path / "v"),
                "--mask",
                mask,
                "--out",
                str(out),
                "--size",
                "0",
                "--no-overlay",
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sorted(os.listdir(out / "masks")) == ["00000.png", "00001.png", "00003.png", "00005.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["path"] for s in summary["skipped"]] == [paths[2], paths[4]] and summary["frames"] == 4
    assert "skipped 2 unreadable frame(s)" in err
    # the first frame is the mask's: unreadable, it stops the run with one line naming it
    truncate(paths[0])
    assert (
        main(
            [
                "propagate",
                str(tmp_path / "v"),
                "--mask",
                mask,
                "--out",
                str(tmp_path / "o2"),
                "--size",
                "0",
                "--no-progress",
            ]
        )
        == 2
    )
    assert paths[0] in one_line_error(capsys.readouterr().err)


def test_eval_davis_names_an_unreadable_frame_in_one_line(tmp_path, capsys):
    root = tmp_path / "davis"
    frames, labels = render_video(5, num_frames=4, size=SIZE, num_objects=1)
    paths = write_frames(frames, str(root / "JPEGImages" / "480p" / "bear"))
    for t, lab in enumerate(labels):
        write_palette_png(lab, str(root / "Annotations" / "480p" / "bear" / f"{t:05d}.png"))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    truncate(paths[2])  # used to end in a raw "OSError: image file is truncated" traceback
    argv = [
        "eval",
        "davis",
        "--model",
        "resnet18",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--no-progress",
        "--overlay-frames",
        "0",
    ]
    assert main(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert paths[2] in line and "truncated" in line
    with open(paths[2], "wb") as f:
        f.write(b"garbage")  # UnidentifiedImageError
    assert main(argv) == 2
    assert paths[2] in one_line_error(capsys.readouterr().err)


def test_settings_that_train_nothing_are_refused(tmp_path, capsys):
    # item 11: 0.9 on the 2x2 grid of a 64-pixel input keeps int(4 * 0.1) = 0 patches; it used to exit 0
    rc = main(
        [
            "pretrain",
            "--model",
            "videomac_cnxv2_atto",
            "--input-size",
            "64",
            "--mask-ratio",
            "0.9",
            "--synthetic-videos",
            "4",
            "--output-dir",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "0 visible patches" in line and "<= 0.75" in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="0 visible patches"):
        random_mask(2, (2, 2), 0.9)
    assert random_mask(2, (2, 2), 0.75).logical_not().sum(dim=(1, 2)).tolist() == [1, 1]
    # a float mask is refused, not cast (0.5 would have masked every cell)
    from videomac.pretrain.checkpoint import build_model

    model = build_model(PretrainConfig(model="videomac_cnxv2_atto", decoder_dim=32))
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(TypeError, match="bool"):
        model(x, x, mask=torch.full((2, 2, 2), 0.5))
    with pytest.raises(TypeError, match="bool"):
        model.online.encoder(x, torch.zeros(2, 2, 2))
    # mask_ratio=0: the loss is computed on masked patches only, so it is 0; say so
    cfg = PretrainConfig(
        model="videomac_cnxv2_atto",
        input_size=64,
        batch_size=4,
        decoder_dim=32,
        num_workers=0,
        synthetic_videos=4,
        synthetic_frames=4,
        pairs_per_video=1,
        progress=False,
        max_steps=1,
        mask_ratio=0.0,
        export=False,
        output_dir=str(tmp_path / "zero"),
    )
    with pytest.warns(UserWarning, match="loss is 0"):
        pretrain(cfg)


def test_clear_errors_for_unknown_models_and_sizes(tmp_path, capsys):
    # item 13: an unknown model ended in a RuntimeError traceback
    assert main(["pretrain", "--model", "videomac_nope", "--output-dir", str(tmp_path / "x")]) == 2
    assert "unknown model 'videomac_nope'" in one_line_error(capsys.readouterr().err)
    # a model the sparse encoder cannot run: TypeError, not AttributeError about conv1
    import timm

    from videomac.models.encoder import SparseEncoder

    with pytest.raises(TypeError):
        SparseEncoder(timm.create_model("vit_tiny_patch16_224", img_size=64))
    # propagate --size 1 failed inside a convolution
    frames, labels = render_video(6, num_frames=3, size=SIZE, num_objects=1)
    write_frames(frames, str(tmp_path / "v"))
    mask = write_palette_png(labels[0], str(tmp_path / "m.png"))
    for size in ("1", "8x8"):
        rc = main(["propagate", str(tmp_path / "v"), "--mask", mask, "--out", str(tmp_path / "o"), "--size", size])
        line = one_line_error(capsys.readouterr().err)
        assert rc == 2 and "at least 32 pixels" in line, line
    assert not (tmp_path / "o").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the smallest allowed size runs
        assert (
            main(
                [
                    "propagate",
                    str(tmp_path / "v"),
                    "--mask",
                    mask,
                    "--out",
                    str(tmp_path / "o"),
                    "--size",
                    "32",
                    "--no-overlay",
                    "--no-progress",
                ]
            )
            == 0
        )
