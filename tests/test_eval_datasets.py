"""VIP and JHMDB runners on tiny synthetic datasets in their documented layouts."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_davis import Colour

from videomac.cli import main as cli_main
from videomac.eval.datasets import DatasetLayoutError, JhmdbDataset, VipDataset
from videomac.eval.features import FeatureExtractor
from videomac.eval.metrics import confusion_matrix, miou_from_confusion
from videomac.eval.runner import gaussian_joint_maps, maps_to_joints, run_vip, vip_confusion
from videomac.synthetic import render_video, write_frames, write_palette_png


def test_vip_cli(tmp_path, capsys):
    r = tmp_path / "vip"
    frames, labels = render_video(3, num_frames=6, size=(80, 64), num_objects=3)
    write_frames(frames, str(r / "Images" / "videos1"))
    for t in range(0, 6, 2):  # sparse labels, as VIP
        write_palette_png(labels[t], str(r / "Category_ids" / "videos1" / f"{t:05d}.png"))
    with pytest.raises(DatasetLayoutError, match="missing video list"):
        VipDataset(str(r))
    (r / "lists").mkdir()
    (r / "lists" / "val_videos.txt").write_text("videos1\n")
    out = tmp_path / "out"
    assert (
        cli_main(
            ["eval", "vip", "--model", "resnet18", "--root", str(r), "--out", str(out), "--size", "96", "--no-progress"]
        )
        == 0
    )
    assert "mIoU" in capsys.readouterr().out
    assert len(os.listdir(out / "videos1")) == 6 and (out / "results.json").is_file()


def test_vip_confusion_upsamples_prediction_to_native_size():
    pred = np.array([[1, 2, 3], [0, 1, 19]], np.uint8)  # at processing size 2x3
    gt = np.kron(pred, np.ones((2, 2), np.uint8))  # native size 4x6: each cell a 2x2 block
    gt[0, 0] = 255  # ignored, as CRW's fast_hist skips labels outside 0..19
    gt[3, 5] = 4
    conf = vip_confusion(gt, pred, 20)
    assert conf.shape == (20, 20) and conf.sum() == 4 * 6 - 1
    expect = np.zeros((20, 20), np.int64)
    for g, p_, n in [(1, 1, 3 + 4), (2, 2, 4), (3, 3, 4), (0, 0, 4), (19, 19, 3), (4, 19, 1)]:
        expect[g, p_] += n
    np.testing.assert_array_equal(conf, expect)


def test_vip_scored_at_annotation_size_with_frame_0(tmp_path):
    """As CRW's eval_vip.py: every saved prediction with a label PNG is scored -- frame 0 included -- after
    a nearest resize from the processing size (40x40 here) to the annotation's native size (72x56)."""
    r = tmp_path / "vip"
    H, W, size = 72, 56, 40
    frames, labels = render_video(7, num_frames=5, size=(H, W), num_objects=3)
    write_frames(frames, str(r / "Images" / "videos1"))
    labelled = [0, 2, 4]
    for t in labelled:
        write_palette_png(labels[t], str(r / "Category_ids" / "videos1" / f"{t:05d}.png"))
    (r / "val_videos.txt").write_text("videos1\n")
    out = tmp_path / "out"
    m = run_vip(FeatureExtractor(Colour(), stage="pool"), str(r), str(out), size=size, progress=False, overlay_frames=0)
    conf = np.asarray(m["confusion_matrix"])
    assert conf.sum() == len(labelled) * H * W  # native size, three labelled frames (frame 0 among them)
    preds = {t: np.asarray(Image.open(out / "videos1" / f"{t:05d}.png")) for t in range(5)}
    assert all(p.shape == (size, size) for p in preds.values())
    expect = sum(
        confusion_matrix(labels[t], np.asarray(Image.fromarray(preds[t]).resize((W, H), Image.NEAREST)), 20)
        for t in labelled
    )
    np.testing.assert_array_equal(conf, expect)
    assert m["mIoU"] == miou_from_confusion(expect)[0] == m["per_video"][0]["mIoU"]
    assert 0.3 < m["mIoU"] < 1.0
    # frame 0 is the given labels passed through the feature grid and back, as CRW saves it
    lab0 = np.asarray(Image.fromarray(labels[0]).resize((size, size), Image.NEAREST))
    assert 0.9 < (preds[0] == lab0).mean() < 1.0


def test_joint_maps_roundtrip():
    xy = np.array([[3.2, 10.0, 0.4], [5.7, 2.0, 7.0]])
    maps = gaussian_joint_maps(xy, (12, 14))
    assert maps.shape == (4, 12, 14) and maps[1].max() == 1.0
    assert maps[1, 6, 3] == 1.0  # CRW centres the Gaussian on the rounded point
    back = maps_to_joints(torch.from_numpy(maps))
    np.testing.assert_allclose(back[:, 1], [10.0, 2.0], atol=0.2)


def test_jhmdb_cli(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    j = tmp_path / "jhmdb"
    frames, labels = render_video(4, num_frames=6, size=(80, 64), num_objects=1)
    write_frames(frames, str(j / "Rename_Images" / "run" / "v1"), ext="png")
    pos = np.zeros((2, 15, 6))
    for t in range(6):
        ys, xs = np.nonzero(labels[t] == 1)
        pos[0, :, t] = np.linspace(xs.min(), xs.max(), 15) + 1  # 1-based, as the .mat files
        pos[1, :, t] = np.linspace(ys.min(), ys.max(), 15) + 1
    (j / "joint_positions" / "run" / "v1").mkdir(parents=True)
    scipy_io.savemat(str(j / "joint_positions" / "run" / "v1" / "joint_positions.mat"), {"pos_img": pos})
    (j / "jhmdb_vallist.txt").write_text("run/v1\nrun/missing\n")
    with pytest.raises(DatasetLayoutError, match="missing frame folder .*missing"):
        JhmdbDataset(str(j))
    (j / "jhmdb_vallist.txt").write_text("run/v1\n")
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "eval",
                "jhmdb",
                "--model",
                "resnet18",
                "--root",
                str(j),
                "--out",
                str(out),
                "--size",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "PCK@0.2" in capsys.readouterr().out
    assert (out / "keypoints" / "run__v1.npy").is_file()
