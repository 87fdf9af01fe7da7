"""Synthetic DAVIS-format dataset: propagation beats copying the first mask; the CLI end to end."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from videomac.cli import main as cli_main
from videomac.eval.datasets import DatasetLayoutError, read_label_png, write_label_png
from videomac.eval.davis import GLOBAL_KEYS, evaluate
from videomac.eval.features import FeatureExtractor
from videomac.eval.runner import run_davis
from videomac.synthetic import render_video, write_frames, write_palette_png

SEQS = ("seq-a", "seq-b")
T = 10


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    for i, s in enumerate(SEQS):
        frames, labels = render_video(10 + i, num_frames=T, size=(96, 128), num_objects=2)
        write_frames(frames, str(root / "JPEGImages" / "480p" / s))
        for t in range(T):
            write_palette_png(labels[t], str(root / "Annotations" / "480p" / s / f"{t:05d}.png"))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQS) + "\n")
    return str(root)


class Colour(nn.Module):
    """Raw-colour features: the average colour of each 4x4 cell (a sanity baseline)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        return self.pool(x)


def _copy_first(root, out):
    for s in SEQS:
        a0 = read_label_png(os.path.join(root, "Annotations", "480p", s, "00000.png"))
        for t in range(T):
            write_label_png(a0, os.path.join(out, s, f"{t:05d}.png"))
    return evaluate(root, out)["J&F-Mean"]


def test_propagation_beats_copying_first_mask(davis_root, tmp_path):
    copy = _copy_first(davis_root, str(tmp_path / "copy"))
    colour = run_davis(
        FeatureExtractor(Colour(), stage="pool"), davis_root, str(tmp_path / "c"), progress=False, overlay_frames=0
    )["J&F-Mean"]
    torch.manual_seed(0)
    rn = run_davis(FeatureExtractor("resnet18"), davis_root, str(tmp_path / "r"), progress=False, overlay_frames=0)[
        "J&F-Mean"
    ]
    assert colour > copy + 0.2 and rn > copy + 0.1, (copy, colour, rn)
    # perfect results score 1
    perfect = str(tmp_path / "gt")
    for s in SEQS:
        for t in range(T):
            p = os.path.join(davis_root, "Annotations", "480p", s, f"{t:05d}.png")
            write_label_png(read_label_png(p), os.path.join(perfect, s, f"{t:05d}.png"))
    assert evaluate(davis_root, perfect)["J&F-Mean"] == 1.0


def test_cli_end_to_end(davis_root, tmp_path, capsys):
    out = tmp_path / "out"
    torch.manual_seed(0)
    rc = cli_main(
        [
            "eval",
            "davis",
            "--model",
            "resnet18",
            "--root",
            davis_root,
            "--out",
            str(out),
            "--sequences",
            SEQS[0],
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "DAVIS layout: DAVIS-2017" in captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    with open(out / "results.json") as f:
        saved = json.load(f)
    again = evaluate(davis_root, str(out), sequences=[SEQS[0]])
    for k in GLOBAL_KEYS:
        assert again[k] == pytest.approx(saved[k], abs=1e-12)
        assert printed[k] == pytest.approx(saved[k], abs=1e-6)
    assert [r["sequence"] for r in saved["per_sequence"]] == [SEQS[0]] * 2
    assert saved["layout"] == "DAVIS-2017" and saved["excluded_sequences"] == []
    assert saved["encoder"]["stage"] == "layer4" and saved["encoder"]["stride"] == 8
    assert (out / "excluded-sequences-val.csv").read_text().splitlines() == ["Sequence,Reason"]
    pngs = sorted(os.listdir(out / SEQS[0]))
    assert pngs == [f"{t:05d}.png" for t in range(T)]
    from PIL import Image

    with Image.open(out / SEQS[0] / "00003.png") as im:
        assert im.mode == "P" and im.size == (128, 96)
    assert (out / "overlays" / f"{SEQS[0]}.png").is_file()
    header = (out / "global_results-val.csv").read_text().splitlines()[0]
    assert header.split(",") == GLOBAL_KEYS
    assert (out / "per-sequence_results-val.csv").read_text().splitlines()[1].startswith(f"{SEQS[0]}_1,")


def test_clear_errors(davis_root, tmp_path, capsys):
    with pytest.raises(DatasetLayoutError, match=r"missing split list .*val\.txt"):
        evaluate(str(tmp_path), str(tmp_path))
    with pytest.raises(DatasetLayoutError, match="missing result masks"):
        evaluate(davis_root, str(tmp_path / "none"))
    with pytest.raises(ValueError, match="not in"):
        evaluate(davis_root, str(tmp_path), sequences=["nope"])
    rc = cli_main(["eval", "davis", "--model", "no_such_model", "--root", davis_root, "--out", str(tmp_path)])
    assert rc == 2 and "unknown model 'no_such_model'" in capsys.readouterr().err
    os.makedirs(tmp_path / "bad" / "ImageSets" / "2017")
    (tmp_path / "bad" / "ImageSets" / "2017" / "val.txt").write_text("x\n")
    with pytest.raises(DatasetLayoutError, match=r"Annotations.480p"):
        run_davis(None, str(tmp_path / "bad"), str(tmp_path / "o"))
    assert np.array_equal(
        read_label_png(os.path.join(davis_root, "Annotations", "480p", SEQS[0], "00000.png")).shape, (96, 128)
    )
