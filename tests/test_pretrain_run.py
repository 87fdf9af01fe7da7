"""Real pretraining runs on the built-in videos: learning, resume, DDP, NaN stop, CLI outputs."""

import json
import os
import socket
import subprocess
import sys

import pytest
import timm
import torch
from helpers import tiny
from PIL import Image
from safetensors.torch import load_file

from videomac.cli import main
from videomac.pretrain.checkpoint import load_checkpoint
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain

SMALL = tiny()


def read_metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_loss_falls_on_builtin_videos(tmp_path):
    settings = dict(
        SMALL,
        input_size=96,
        batch_size=16,
        decoder_dim=512,
        synthetic_videos=8,
        synthetic_frames=16,
        pairs_per_video=2,
        max_steps=120,
        lr=3e-3,
        warmup_steps=10,
        ema_base=0.9,
        log_every=1,
    )
    cfg = PretrainConfig(**settings, output_dir=str(tmp_path / "run"))
    pretrain(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 120
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last <= 0.7 * first, (first, last)


@pytest.mark.slow
def test_outputs_of_a_run(tmp_path):
    out = tmp_path / "run"
    summary = pretrain(PretrainConfig(**SMALL, max_steps=4, log_every=2, save_every=2, output_dir=str(out)))
    assert summary["step"] == 4
    for name in ["checkpoint.pt", "config.json", "metrics.jsonl", "reconstruction.png", "encoder.safetensors"]:
        assert (out / name).is_file(), name
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [2, 4]
    assert {"step", "loss", "loss_online", "loss_target", "loss_consistency", "lr", "momentum"} <= rows[0].keys()
    assert Image.open(out / "reconstruction.png").size[0] > 5 * 64
    ck = load_checkpoint(str(out))
    assert {"model", "optimizer", "scaler", "step", "epoch", "rng", "config"} <= ck.keys()
    assert not list(out.glob("*.tmp-*"))  # atomic writes leave no temporaries
    # the exported encoder loads into timm through pretrained_cfg_overlay
    m = timm.create_model(
        "videomac_cnxv2_atto", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "encoder.safetensors"))
    )
    sd = load_file(str(out / "encoder.safetensors"))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    online = {k[len("online.encoder.model.") :]: v for k, v in ck["model"].items() if k.startswith("online.encoder.")}
    assert all(torch.equal(online[k], v) for k, v in sd.items())


@pytest.mark.slow
def test_gradient_accumulation_and_bf16_autocast(tmp_path):
    out = tmp_path / "run"
    summary = pretrain(
        PretrainConfig(
            **dict(SMALL, batch_size=2),
            accum_iter=2,
            amp="bf16",
            max_steps=2,
            log_every=1,
            clip_grad=1.0,
            output_dir=str(out),
        )
    )
    assert summary["effective_batch"] == 4 and summary["step"] == 2
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)
    ck = load_checkpoint(str(out))
    # 8 videos / batch 2 = 4 micro-batches = 2 optimizer steps: the two steps finished exactly one epoch
    assert ck["epoch"] == 1 and ck["micro_done"] == 0
    assert ck["base_lr"] == pytest.approx(1e-3)
    # lr defaults to blr * effective batch / 256
    summary = pretrain(
        PretrainConfig(
            **dict(SMALL, lr=None, batch_size=2), blr=2e-3, total_batch=8, max_steps=1, output_dir=str(tmp_path / "blr")
        )
    )
    assert summary["effective_batch"] == 8
    assert load_checkpoint(str(tmp_path / "blr"))["base_lr"] == pytest.approx(2e-3 * 8 / 256)


@pytest.mark.slow
def test_one_loader_iterator_spans_the_epochs(tmp_path, monkeypatch):
    """The workers prefetch across epoch ends: a run of three epochs opens the loader once (an iterator
    per epoch left the device waiting ~40% of the first steps of every epoch, docs/performance.md)."""
    opened = []
    real_iter = torch.utils.data.DataLoader.__iter__

    def counting(self):
        opened.append(1)
        return real_iter(self)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", counting)
    summary = pretrain(PretrainConfig(**dict(SMALL, num_workers=1), max_steps=6, output_dir=str(tmp_path / "run")))
    assert summary["epoch"] == 3 and len(opened) == 1  # 8 pairs / batch 4: 2 steps an epoch


@pytest.mark.slow
def test_interrupt_and_resume_matches_uninterrupted(tmp_path):
    base = dict(SMALL, max_steps=6, save_every=100, seed=3)
    pretrain(PretrainConfig(**base, output_dir=str(tmp_path / "full")))
    stopped = pretrain(PretrainConfig(**base, stop_after=4, output_dir=str(tmp_path / "part")))
    assert stopped["stopped"] and stopped["step"] == 4
    assert not (tmp_path / "part" / "encoder.safetensors").exists()
    main(["pretrain", "--resume", str(tmp_path / "part"), "--no-progress"])
    a = load_checkpoint(str(tmp_path / "full"))
    b = load_checkpoint(str(tmp_path / "part"))
    assert b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = PretrainConfig(
        **dict(SMALL, lr=1e8, warmup_steps=0), max_steps=50, save_every=1, output_dir=str(tmp_path / "run")
    )
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        pretrain(cfg)
    ck = load_checkpoint(str(tmp_path / "run"))
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "videomac.cli",
        "pretrain",
        "--model",
        "videomac_cnxv2_atto",
        "--input-size",
        "64",
        "--batch-size",
        "2",
        "--accum-iter",
        "2",
        "--decoder-dim",
        "32",
        "--max-steps",
        "3",
        "--num-workers",
        "0",
        "--synthetic-videos",
        "8",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--no-progress",
        "--log-every",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["effective_batch"] == 8  # 2 ranks x batch 2 x 2 accumulation steps
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint.pt"]
    assert len(read_metrics(out)) == 3  # only rank 0 writes


@pytest.mark.slow
def test_cli_pretrain_and_visualize(tmp_path):
    from videomac.synthetic import render_video, write_video

    out = tmp_path / "run"
    rc = main(
        [
            "pretrain",
            "--model",
            "videomac_rn18",
            "--input-size",
            "64",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--decoder-dim",
            "32",
            "--num-workers",
            "0",
            "--synthetic-videos",
            "4",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0 and (out / "encoder.safetensors").is_file()
    video = write_video(render_video(7, num_frames=6, size=(64, 96))[0], str(tmp_path / "clip.mp4"))
    fig = tmp_path / "fig.png"
    assert main(["visualize", str(out), video, "--out", str(fig), "--rows", "2"]) == 0
    assert Image.open(fig).size[1] > 2 * 64
    assert main(["pretrain", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["pretrain", "--model", "videomac_nope", "--output-dir", str(tmp_path / "x"), "--max-steps", "1"]) == 2
