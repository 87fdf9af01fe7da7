"""Never lose work: resume is bit-exact with DataLoader workers (item 3), and SIGINT / SIGTERM sent to the
whole process group (Ctrl-C, schedulers, ``kill -- -PGID``) end a real ``videomac pretrain`` process with
a checkpoint at the current step (item 4)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import group_gone, tiny, tiny_argv

from videomac.cli import main
from videomac.pretrain.checkpoint import load_checkpoint
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain

SMALL = tiny(seed=3)


@pytest.mark.slow
def test_stop_and_resume_with_two_workers_is_bit_exact(tmp_path):
    base = dict(SMALL, max_steps=6, save_every=100, num_workers=2)
    pretrain(PretrainConfig(**base, output_dir=str(tmp_path / "full")))
    # 2 workers used to give 151/153 differing tensors: stop after 3 steps, resume in a new process state
    stopped = pretrain(PretrainConfig(**base, stop_after=3, output_dir=str(tmp_path / "part")))
    assert stopped["stopped"] and stopped["step"] == 3
    assert main(["pretrain", "--resume", str(tmp_path / "part"), "--stop-after", "100", "--no-progress"]) == 0
    a, b = load_checkpoint(str(tmp_path / "full")), load_checkpoint(str(tmp_path / "part"))
    assert b["step"] == 6
    differ = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not differ, f"{len(differ)}/{len(a['model'])} tensors differ after resume"
    # each item's crop and flip come from its own seed: the worker count does not change the run either
    pretrain(PretrainConfig(**dict(base, num_workers=0), output_dir=str(tmp_path / "w0")))
    c = load_checkpoint(str(tmp_path / "w0"))
    assert all(torch.equal(v, c["model"][k]) for k, v in a["model"].items())


@pytest.mark.slow
def test_resume_with_frame_units_is_bit_exact(tmp_path, capsys):
    """JPEG frame folders served by unit (--frame-units, recorded in the run's config): a stopped run resumed
    with another worker count equals an uninterrupted one, across an epoch boundary (the epoch order stays
    dealt to the first run's workers)."""
    from videomac.synthetic import render_video, write_frames

    for v in range(3):
        write_frames(render_video(v, 10, (192, 256))[0], str(tmp_path / "data" / f"v{v}"))  # DCT scales 1 and 1/2
    base = {k: v for k, v in SMALL.items() if k not in ("synthetic_videos", "synthetic_frames", "pairs_per_video")}
    base.update(data=str(tmp_path / "data"), frame_units=True, max_steps=8, save_every=100, num_workers=2)
    pretrain(PretrainConfig(**base, output_dir=str(tmp_path / "full")))  # 27 pairs: 6 steps an epoch
    stopped = pretrain(PretrainConfig(**base, stop_after=3, output_dir=str(tmp_path / "part")))
    assert stopped["stopped"] and stopped["step"] == 3
    argv = ["pretrain", "--resume", str(tmp_path / "part"), "--stop-after", "100", "--num-workers", "1"]
    assert main(argv + ["--no-progress"]) == 0
    assert "keeping the epoch order of the saved run, dealt to 2" in capsys.readouterr().err
    a, b = load_checkpoint(str(tmp_path / "full")), load_checkpoint(str(tmp_path / "part"))
    differ = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not differ, f"{len(differ)}/{len(a['model'])} tensors differ after resume"
    assert b["step"] == 8 and b["config"]["frame_units"] is True and b["order_workers"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_checkpoints_the_current_step(tmp_path, sig):
    out = tmp_path / "run"
    tiny_cli = tiny_argv(lr=None, warmup_steps=None, num_workers=2, max_steps=100000, save_every=500, log_every=1)
    cmd = [sys.executable, "-m", "videomac.cli", "pretrain", *tiny_cli, "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a session of its own: the signal goes to the trainer and its DataLoader workers alike
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    metrics = out / "metrics.jsonl"
    try:
        deadline = time.time() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no steps logged"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # before: SIGINT wrote no checkpoint; SIGTERM crashed on "DataLoader worker ... killed by signal"
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err
    assert f"{sig.name} received: stopped at step" in err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    ck = load_checkpoint(str(out))
    assert ck["step"] == steps[-1] >= 3  # the step it was on: nothing lost (save_every is 500)
    assert group_gone(proc.pid), "DataLoader workers outlived the run"
