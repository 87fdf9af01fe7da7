"""A training run always ends (issue 21, part A): every error with DataLoader workers exits with a
documented code and one line, the run folder is owned by one run, a resume is the checkpoint's run, and
every setting is checked against its range before anything loads. Real processes, signals, files, mounts."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import group_gone, tiny, tiny_argv

from videomac.cli import main
from videomac.pretrain.checkpoint import LOCK, is_run_folder, load_checkpoint, run_lock, write_checkpoint
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain

SMALL = tiny()
CLI = [sys.executable, "-m", "videomac.cli", "pretrain", *tiny_argv(lr=None, warmup_steps=None, num_workers=None)]
ARGS = ["--no-progress"]


def _start(args, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a session of its own: the test can tell whether any worker outlived the run
    return subprocess.Popen(
        CLI + args + ["--output-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _finish(proc, timeout=240):
    """The process's (rc, stderr); a process still alive after ``timeout`` fails the test (a hang)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running {timeout} s later (hung): {err[-2000:]}")
    return proc.returncode, err


def _wait_for_steps(proc, out, n, timeout=300):
    metrics = out / "metrics.jsonl"
    end = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, "no steps logged"
        time.sleep(0.05)


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _one_error_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("videomac pretrain: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_nan_loss_with_workers_exits_1(tmp_path):
    # before: the NaN error was printed, then the process stayed alive (workers ignore SIGTERM)
    proc = _start(["--num-workers", "1", "--lr", "1e9", "--max-steps", "50"], tmp_path / "run")
    rc, err = _finish(proc)
    assert rc == 1
    assert "NonFiniteLossError: loss is nan" in _one_error_line(err)
    assert group_gone(proc.pid), "DataLoader workers outlived the run"


@pytest.mark.slow
def test_a_killed_worker_ends_the_run_with_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["--num-workers", "2", "--max-steps", "100000", "--log-every", "1", "--save-every", "2"]
    proc = _start(args, out)
    try:
        _wait_for_steps(proc, out, 3)
        workers = _children(proc.pid)
        assert workers, "no DataLoader workers"
        os.kill(workers[0], signal.SIGKILL)  # what the OOM killer does
        rc, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 1
    line = _one_error_line(err)
    assert "DataLoadingError" in line and "DataLoader worker" in line and "--resume" in line
    assert load_checkpoint(str(out))["step"] >= 2  # the last good checkpoint is intact
    assert group_gone(proc.pid), "DataLoader workers outlived the run"


@pytest.mark.slow
def test_a_data_folder_removed_mid_run_ends_the_run(tmp_path):
    from videomac.synthetic import render_video, write_frames

    data = tmp_path / "data"
    for v in range(2):
        write_frames(render_video(v, 30, (64, 64))[0], str(data / f"v{v}"))
    out = tmp_path / "run"
    args = [
        "--data",
        str(data),
        "--pairs-per-video",
        "20",
        "--num-workers",
        "1",
        "--max-steps",
        "100000",
        "--log-every",
        "1",
        "--save-every",
        "1",
    ]
    proc = _start(args, out)
    try:
        _wait_for_steps(proc, out, 2)
        shutil.rmtree(data)
        rc, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 1
    assert "DataLoadingError: loading training data failed" in _one_error_line(err)
    assert load_checkpoint(str(out))["step"] >= 1
    assert group_gone(proc.pid), "DataLoader workers outlived the run"


def _tmpfs(path, size):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.mark.slow
def test_a_disk_that_fills_during_torch_save_is_one_line(tmp_path):
    first = tmp_path / "first"
    pretrain(PretrainConfig(**SMALL, max_steps=1, output_dir=str(first)))
    size = (first / "checkpoint.pt").stat().st_size
    disk = tmp_path / "disk"
    _tmpfs(disk, (size * 3) // 2)  # room for the checkpoint, not for the next one beside it
    try:
        out = disk / "run"
        shutil.copytree(first, out, ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
        before = (out / "checkpoint.pt").read_bytes()
        proc = _start(["--resume", str(out), "--max-steps", "3", "--num-workers", "1"], out)
        rc, err = _finish(proc)
        # before: "RuntimeError: [enforce fail at inline_container.cc] unexpected pos" and a traceback
        assert rc == 1
        line = _one_error_line(err)
        assert "no space left on" in line and "while writing" in line and "checkpoint.pt" in line
        assert (out / "checkpoint.pt").read_bytes() == before
        assert not [p for p in os.listdir(out) if ".tmp-" in p]
        assert group_gone(proc.pid)
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
def test_a_run_folder_is_owned_by_one_run(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(["--num-workers", "1", "--max-steps", "100000", "--log-every", "1", "--save-every", "1"], out)
    try:
        _wait_for_steps(proc, out, 2)
        # a second run, concurrent: refused, naming the holder (before: both ran, the folder a mix of the two)
        assert main(["pretrain", "--resume", str(out), "--max-steps", "100000", *ARGS]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {proc.pid} on " in err and len(err.strip().splitlines()) == 1
        os.killpg(proc.pid, signal.SIGTERM)
        rc, _ = _finish(proc)
        assert rc == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step = load_checkpoint(str(out))["step"]
    assert is_run_folder(str(out)) and (out / LOCK).exists()
    # the lock ended with its process: the run resumes (and records itself as the holder)
    assert main(["pretrain", "--resume", str(out), "--max-steps", str(step + 1), *ARGS]) == 0
    assert load_checkpoint(str(out))["step"] == step + 1
    # a lock left by a process that was SIGKILLed is taken over
    code = (
        "import os, sys; from videomac.pretrain.checkpoint import run_lock\n"
        "with run_lock(sys.argv[1]): os.kill(os.getpid(), 9)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(out)])
    assert killed.returncode == -signal.SIGKILL
    with run_lock(str(out)):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def test_is_run_folder(tmp_path):
    assert not is_run_folder(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    assert not is_run_folder(str(tmp_path / "plain"))
    for names in ([LOCK], ["checkpoint.pt"], ["checkpoint-00000004.pt"], ["config.json", "metrics.jsonl"]):
        folder = tmp_path / "_".join(names)
        folder.mkdir()
        for n in names:
            (folder / n).write_bytes(b"")
        assert is_run_folder(str(folder)), names
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")  # an export folder: config.json alone
    assert not is_run_folder(str(tmp_path / "export"))


@pytest.mark.slow
def test_a_resume_is_the_checkpoints_run(tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(PretrainConfig(**SMALL, max_steps=3, save_every=1, output_dir=str(out)))
    newest = (out / "checkpoint.pt").read_bytes()
    # an older checkpoint while a newer one exists: refused (it used to overwrite the newer checkpoint.pt)
    assert main(["pretrain", "--resume", str(out / "checkpoint-00000002.pt"), "--max-steps", "5", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is newer, and the resumed run would overwrite it" in err
    assert (out / "checkpoint.pt").read_bytes() == newest
    # config.json is not the truth: an edited (or an aborted other run's) config.json does not change the run
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(cfg, decoder_dim=64, lr=1e9, seed=7)))
    assert main(["pretrain", "--resume", str(out), "--max-steps", "4", *ARGS]) == 0
    ck = load_checkpoint(str(out))
    assert ck["step"] == 4 and ck["config"]["decoder_dim"] == 32 and ck["config"]["lr"] == 1e-3
    assert json.loads((out / "config.json").read_text())["seed"] == cfg["seed"]
    # flags that conflict with the checkpoint's settings are refused, naming each
    assert main(["pretrain", "--resume", str(out), "--lr", "0.5", "--seed", "9", "--max-steps", "5", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.001 in the checkpoint, 0.5 given; seed: 0 in the checkpoint, 9 given" in err
    # those a resume may change are taken: a longer run, other workers, logging
    assert main(["pretrain", "--resume", str(out), "--max-steps", "5", "--log-every", "1", *ARGS]) == 0
    assert load_checkpoint(str(out))["step"] == 5


@pytest.mark.slow
def test_a_checkpoint_with_missing_or_mistyped_keys_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(PretrainConfig(**SMALL, max_steps=1, output_dir=str(out)))
    ck = load_checkpoint(str(out))
    for broken, expect in [
        ({k: v for k, v in ck.items() if k != "micro_done"}, "has no 'micro_done' entry"),
        (dict(ck, step="1"), "its 'step' entry is str, expected int"),
        ({k: v for k, v in ck.items() if k != "config"}, "has no 'config' entry"),
    ]:
        write_checkpoint(broken, str(out), keep=1)  # a valid digest: the schema, not the checksum, catches it
        # before: KeyError 'micro_done' and a traceback after the model was built
        assert main(["pretrain", "--resume", str(out), "--max-steps", "3", *ARGS]) == 2
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--max-steps", "0", "--max-steps must be at least 1, got 0"),  # used to run the full schedule
        ("--max-steps", "-5", "--max-steps must be at least 1, got -5"),  # used to export an untrained encoder
        ("--epochs", "0", "--epochs must be at least 1, got 0"),
        ("--ema-base", "2", "--ema-base must be at most 1.0, got 2.0"),  # a momentum of 1.5
        ("--weight-decay", "-1", "--weight-decay must be at least 0.0, got -1.0"),
        ("--drop-path", "1.0", "--drop-path must be below 1.0, got 1.0"),
        ("--lr", "inf", "--lr must be a finite number, got inf"),  # used to be a traceback
        ("--gamma", "nan", "--gamma must be a finite number, got nan"),
        ("--motion-weight", "inf", "--motion-weight must be a finite number, got inf"),
        ("--mask-ratio", "1.0", "--mask-ratio must be below 1.0, got 1.0"),
        ("--num-workers", "-2", "--num-workers must be at least 0, got -2"),
        ("--min-lr", "0.1", "--min-lr 0.1 is above --lr 0.001"),
    ],
)
def test_every_setting_is_checked_before_anything_loads(tmp_path, capsys, flag, value, says):
    out = tmp_path / "run"
    lr = [] if flag == "--lr" else ["--lr", "0.001"]
    argv = [
        "pretrain",
        "--model",
        "videomac_cnxv2_atto",
        "--input-size",
        "64",
        *lr,
        flag,
        value,
        "--output-dir",
        str(out),
        *ARGS,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"videomac pretrain: error: {says}") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before the folder, the model or the data


def test_the_library_checks_settings_too(tmp_path):
    with pytest.raises(ValueError, match="--ema-final must be at most 1.0"):
        pretrain(PretrainConfig(**SMALL, ema_final=1.5, output_dir=str(tmp_path / "run")))
    with pytest.raises(ValueError, match=r"--min-lr 1 is above the lr 1\.5625e-05 \(--blr 0\.001 x effective batch 4"):
        pretrain(PretrainConfig(**dict(SMALL, lr=None), min_lr=1, output_dir=str(tmp_path / "run2")))
