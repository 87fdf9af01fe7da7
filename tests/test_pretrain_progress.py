"""Plain progress lines for batch jobs and the loss-curve figure, on real records and files."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from videomac.pretrain.curves import BASELINE_COLOUR, SERIES, loss_curve_figure, read_metrics, save_loss_curve
from videomac.pretrain.progress import ProgressLog, format_line

REC = dict(
    loss=1.8123,
    loss_online=0.7712,
    loss_target=0.9511,
    loss_consistency=0.09,
    lr=1.2e-3,
    momentum=0.996,
    pairs_per_sec=52.3,
    data_wait=0.12,
)


def test_format_line():
    line = format_line(120, 300, REC, 63.4)
    assert line == (
        "step 120/300 (40%) | loss 1.8123 (online 0.7712 target 0.9511 cons 0.0900) | lr 1.20e-03 | "
        "momentum 0.99600 | 52.3 pairs/s | data 12% | eta 0:01:03"
    )


def test_lines_when_not_a_terminal():
    out = io.StringIO()  # not a tty: plain lines, no bar redraws
    log = ProgressLog(total=4, mode="auto", stream=out)
    for _ in range(4):
        log.update()
        log.log(REC)
    log.close()
    lines = out.getvalue().splitlines()
    assert log.mode == "lines" and len(lines) == 4 and "\r" not in out.getvalue()
    assert lines[-1].startswith("step 4/4 (100%) | loss 1.8123") and "eta 0:00:00" in lines[-1]
    with pytest.raises(ValueError, match="progress mode"):
        ProgressLog(3, mode="loud")


def write_metrics(path, steps, resumed_at=None):
    with open(path, "w") as f:
        for s in steps:
            f.write(json.dumps(dict(REC, step=s, loss=2.0 - s / 100)) + "\n")
        if resumed_at is not None:  # a resumed run logs its steps again: the later record wins
            f.write(json.dumps(dict(REC, step=resumed_at, loss=0.5)) + "\n")


def test_loss_curve_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, range(10, 110, 10), resumed_at=50)
    recs = read_metrics(str(metrics))
    assert [r["step"] for r in recs] == list(range(10, 110, 10)) and recs[4]["loss"] == 0.5
    out = save_loss_curve(str(metrics), str(tmp_path / "loss.png"))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (520, 880, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    drawn = [c for k, _, c in SERIES if k in REC]
    assert all(c in colours for c in drawn) and BASELINE_COLOUR in colours
    plain = np.asarray(loss_curve_figure(recs, baseline=None))
    assert BASELINE_COLOUR not in {tuple(c) for c in plain.reshape(-1, 3)}
    with pytest.raises(ValueError, match="no metrics"):
        loss_curve_figure([])


@pytest.mark.slow
def test_batch_job_logs_plain_lines_and_writes_its_curve(tmp_path):
    # a real run with stderr to a pipe (not a terminal): one line per logging interval, no redraws
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "videomac.cli",
        "pretrain",
        "--model",
        "videomac_cnxv2_atto",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--decoder-dim",
        "32",
        "--synthetic-videos",
        "4",
        "--synthetic-frames",
        "6",
        "--max-steps",
        "6",
        "--log-every",
        "2",
        "--num-workers",
        "0",
        "--output-dir",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all("pairs/s" in line and "| data " in line and "| eta " in line for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] > 0 and summary["wall_time_s"] > 0 and summary["pairs_per_s"] > 0
    assert summary["skipped_count"] == 0 and (out / "loss.png").exists()
    rows = read_metrics(str(out / "metrics.jsonl"))
    assert rows[-1]["loss"] == summary["final_loss"] and 0.0 <= rows[-1]["data_wait"] <= 1.0
