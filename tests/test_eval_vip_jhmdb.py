"""VIP and JHMDB runners on tiny synthetic datasets in their documented layouts."""

import os

import numpy as np
import pytest
import torch

from videomac.cli import main as cli_main
from videomac.eval.datasets import DatasetLayoutError, JhmdbDataset, VipDataset
from videomac.eval.runner import gaussian_joint_maps, maps_to_joints
from videomac.synthetic import render_video, write_frames, write_palette_png

pytestmark = pytest.mark.usefixtures("one_thread")


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
