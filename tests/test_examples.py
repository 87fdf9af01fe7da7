"""Every script in examples/ runs as written (a real subprocess) on tiny data made here."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from videomac.eval.datasets import read_label_png
from videomac.synthetic import render_video, write_palette_png, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def column(out, name):
    return [float(v) for v in re.findall(rf"{name} ([0-9.]+)", out)]


@pytest.mark.slow
def test_finetune_classification(tmp_path):
    # Three classes told apart by colour, with noise: learnable in a few steps from scratch.
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for split, n in (("train", 8), ("val", 4)):
        for name, c in colours.items():
            os.makedirs(tmp_path / split / name)
            for i in range(n):
                img = np.clip(np.array(c) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tmp_path / split / name / f"{i}.png")
    # An "encoder.safetensors" as videomac pretrain writes it (headless, timm keys).
    import timm
    from safetensors.torch import save_file

    import videomac  # noqa: F401

    weights = tmp_path / "encoder.safetensors"
    save_file(timm.create_model("videomac_cnxv2_atto").state_dict(), str(weights))
    out = run(
        "finetune_classification.py",
        "--data",
        tmp_path,
        "--model",
        "videomac_cnxv2_atto",
        "--weights",
        weights,
        "--img-size",
        32,
        "--epochs",
        4,
        "--batch-size",
        8,
        "--lr",
        2e-3,
        "--workers",
        0,
        "--out",
        tmp_path / "run",
    )
    assert f"weights: {weights}" in out
    loss, acc = column(out, "train_loss"), column(out, "val_acc")
    assert len(loss) == 4 and loss[-1] < loss[0], out
    assert acc[-1] > 1 / 3, out  # better than chance on held-out images
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_segmentation_head(tmp_path):
    frames, labels = render_video(1, 12, (64, 64), 1)
    os.makedirs(tmp_path / "images")
    for t in range(len(frames)):
        Image.fromarray(frames[t]).save(tmp_path / "images" / f"{t:03d}.png")
        write_palette_png((labels[t] > 0).astype(np.uint8), str(tmp_path / "masks" / f"{t:03d}.png"))
    out = run(
        "segmentation_head.py",
        "--data",
        tmp_path,
        "--img-size",
        64,
        "--epochs",
        12,
        "--batch-size",
        3,
        "--lr",
        3e-3,
        "--backbone-lr-scale",
        1.0,
        "--out",
        tmp_path / "run",
    )
    loss, miou = column(out, "train_loss"), column(out, "val_mIoU")
    assert len(loss) == 12 and loss[-1] < 0.5 * loss[0], out
    assert miou[-1] > 0.6 > miou[0], out  # from all-background to segmenting the object
    preds = sorted(os.listdir(tmp_path / "run" / "pred"))
    assert preds == ["003.png", "007.png", "011.png"]
    assert read_label_png(str(tmp_path / "run" / "pred" / preds[0])).shape == (64, 64)


@pytest.mark.slow
def test_pretrain_own_videos(tmp_path):
    for seed in range(2):
        write_video(render_video(seed, 8, (64, 96), 2)[0], str(tmp_path / "videos" / f"v{seed}.mp4"))
    out = run(
        "pretrain_own_videos.py",
        "--videos",
        tmp_path / "videos",
        "--input-size",
        64,
        "--batch-size",
        2,
        "--max-steps",
        4,
        "--pairs-per-video",
        2,
        "--decoder-dim",
        32,
        "--workers",
        0,
        "--out",
        tmp_path / "run",
    )
    assert "pretrained 4 steps" in out
    assert "into timm.create_model('videomac_cnxv2_atto'): features (1, 320, 2, 2)" in out
    assert "strides [4, 8, 16, 32]" in out
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_propagate_video(tmp_path):
    frames, labels = render_video(3, 10, (96, 128), 2)
    video = write_video(frames, str(tmp_path / "clip.mp4"))
    mask = write_palette_png(labels[0], str(tmp_path / "first.png"))
    out = run("propagate_video.py", video, "--mask", mask, "--out", tmp_path / "tracks", "--batch-size", 3)
    assert "tracked objects [1, 2] through 10 frames" in out
    pngs = sorted(os.listdir(tmp_path / "tracks"))
    assert len(pngs) == 10
    last = read_label_png(str(tmp_path / "tracks" / pngs[-1]))
    assert last.shape == (96, 128) and set(np.unique(last)) <= {0, 1, 2}
