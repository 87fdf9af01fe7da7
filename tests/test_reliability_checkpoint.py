"""Checkpoints: no code runs from one (item 1), damaged ones are caught and resumed around (item 5),
and a run is the folder it is resumed from (item 6). Every test first reproduces the failure as a user
or an attacker would meet it: real runs, real pickles, real files."""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from helpers import copy_run, tiny

from videomac.cli import main
from videomac.pretrain.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    write_checkpoint,
)
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain

SMALL = tiny()
ARGS = ["--no-progress"]


def run(tmp_path, name="run", **kw):
    out = tmp_path / name
    pretrain(PretrainConfig(**{**SMALL, "max_steps": 2, "save_every": 100, **kw}, output_dir=str(out)))
    return out


class RunsCode:
    """A pickle that calls os.system when unpickled (what a hostile checkpoint.pt would hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path, capsys):
    good = run(tmp_path, "good")
    marker = tmp_path / "PWNED"
    # a run folder whose checkpoint.pt runs `touch PWNED` when unpickled, beside a valid config.json
    evil = tmp_path / "evil"
    shutil.copytree(good, evil)
    ck = torch.load(good / "checkpoint.pt", weights_only=True)
    ck["config"]["payload"] = RunsCode(marker)
    torch.save(ck, evil / "checkpoint.pt")
    for name in os.listdir(evil):
        if name.startswith("checkpoint-"):
            os.remove(evil / name)
    with pytest.raises(pickle.UnpicklingError):  # sanity: this file really is hostile
        torch.load(evil / "checkpoint.pt", weights_only=True)
    frames = tmp_path / "frames"
    frames.mkdir()
    from videomac.synthetic import render_video, write_frames

    write_frames(render_video(1, num_frames=3, size=(64, 64))[0], str(frames))
    commands = [
        ["export", str(evil), "--out", str(tmp_path / "exp")],
        ["export", str(evil / "checkpoint.pt"), "--out", str(tmp_path / "exp2"), "--include-checkpoint"],
        ["visualize", str(evil), str(frames), "--out", str(tmp_path / "fig.png")],
        ["push", str(evil), "--repo-id", "me/evil", "--dry-run"],
        ["pretrain", "--resume", str(evil), "--max-steps", "3", *ARGS],
        [
            "convert-official",
            str(evil / "checkpoint.pt"),
            "--model",
            "videomac_cnxv2_atto",
            "--out",
            str(tmp_path / "conv.safetensors"),
        ],
    ]
    for argv in commands:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert "weights_only" in err and "--trust-pickle" in err and "posix.system" in err, (argv, err)
        assert "Traceback" not in err and not marker.exists(), argv
    assert not (evil / "hub" / "me--evil" / "checkpoint.pt").exists()  # nothing to upload
    assert not os.path.exists(tmp_path / "exp2" / "checkpoint.pt")
    with open(evil / "config.json") as f:  # the failed resume wrote nothing
        assert json.load(f)["output_dir"] == str(good)
    assert not marker.exists()


def test_runs_write_weights_only_checkpoints_and_older_ones_need_trust(tiny_run, tmp_path, capsys):
    out = copy_run(tiny_run, tmp_path / "run")
    ck = torch.load(out / "checkpoint.pt", weights_only=True)  # the whole checkpoint, no allow-list
    assert ck["version"] == 2 and len(ck["sha256"]) == 64 and isinstance(ck["rng"], list)
    # a checkpoint as videomac wrote it before: numpy / python RNG state pickled as objects, no digest
    old = dict(
        ck, version=1, rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    )
    del old["sha256"]
    torch.save(old, out / "checkpoint.pt")
    assert main(["pretrain", "--resume", str(out), "--max-steps", "3", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "before the weights-only format" in err and "--trust-pickle" in err and "Traceback" not in err
    assert main(["export", str(out), "--out", str(tmp_path / "e"), "--trust-pickle"]) == 0
    # trusting it once rewrites the run's checkpoint in the safe format
    assert main(["pretrain", "--resume", str(out), "--max-steps", "3", "--trust-pickle", *ARGS]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    # --include-checkpoint never publishes a file that needed trust
    with pytest.raises(ValueError, match="cannot be combined with --trust-pickle"):
        from videomac.hub import export_folder

        export_folder(str(out), str(tmp_path / "h"), include_checkpoint=True, trust_pickle=True)


def _flip_tensor_bytes(path):
    """Flip two bytes in the middle of the largest tensor record (what bit rot or a bad copy does)."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        n, m = np.frombuffer(f.read(4), "<u2")
    pos = info.header_offset + 30 + int(n) + int(m) + info.file_size // 2
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(2)
        f.seek(pos)
        f.write(bytes(x ^ 0xFF for x in b))


@pytest.mark.slow
def test_damaged_checkpoints_are_caught_and_resume_falls_back(tmp_path, capsys):
    out = run(tmp_path, max_steps=4, save_every=1, keep_checkpoints=2)
    # the last two are kept, each with its checksum
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint-00000003.pt", "checkpoint.pt"]
    assert load_checkpoint(str(out))["step"] == 4
    # a 2-byte flip inside a tensor used to load silently
    _flip_tensor_bytes(out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_checkpoint(str(out))
    rc = main(["pretrain", "--resume", str(out), "--max-steps", "6", "--log-every", "1", *ARGS])
    err = capsys.readouterr().err
    assert rc == 0 and "does not match its sha256" in err and "checkpoint-00000003.pt (step 3)" in err
    assert load_checkpoint(str(out))["step"] == 6
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [4, 4, 5, 6]  # step 4 redone from step 3
    # a truncated file used to end in "failed finding central directory" and a traceback
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(str(out))
    assert main(["export", str(out), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "truncated or damaged" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain", "--resume", str(out), "--max-steps", "7", *ARGS]) == 0
    assert "resuming from" in capsys.readouterr().err and load_checkpoint(str(out))["step"] == 7
    # nothing intact: one line naming every file tried
    for p in out.glob("checkpoint*"):
        p.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["pretrain", "--resume", str(out), "--max-steps", "8", *ARGS]) == 2
    assert "no intact checkpoint" in capsys.readouterr().err


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tiny_run, tmp_path):
    out = copy_run(tiny_run, tmp_path / "run")
    before = (out / "checkpoint.pt").read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # the old fixed temporary names (checkpoint.pt.tmp-<pid>, any pid): a link there once made the run write
    # its checkpoint wherever it pointed
    for pid in (os.getpid(), os.getpid() + 1):
        os.symlink(victim, out / f"checkpoint.pt.tmp-{pid}")
    write_checkpoint(load_checkpoint(str(out)), str(out), keep=2, previous_step=2)
    atomic_save({"x": torch.zeros(10)}, str(tmp_path / "other.pt"))
    assert victim.read_bytes() == b"precious"
    assert load_checkpoint(str(out))["step"] == 2 and (out / "checkpoint-00000002.pt").read_bytes() == before
    assert not [p for p in os.listdir(out) if ".tmp-" in p and not p.startswith("checkpoint.pt.tmp-")]


@pytest.mark.slow
def test_temporaries_of_killed_writers_are_removed(tiny_run, tmp_path, capsys):
    out = copy_run(tiny_run, tmp_path / "run")
    # a process SIGKILLed while writing a checkpoint leaves its temporary behind
    code = (
        "import os, signal, sys\n"
        "from videomac.files import atomic_file\n"
        "cm = atomic_file(sys.argv[1]); tmp = cm.__enter__()\n"
        "open(tmp, 'wb').write(b'x' * 1000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(out / "checkpoint.pt")])
    assert p.wait(timeout=120) == -signal.SIGKILL
    stale = list(out.glob(".checkpoint.pt.tmp-*"))
    assert len(stale) == 1 and stale[0].name.startswith(f".checkpoint.pt.tmp-{p.pid}-")
    live = out / f".encoder.safetensors.tmp-{os.getppid()}-abc"  # a live process's temporary is left alone
    live.write_bytes(b"x")
    assert main(["pretrain", "--resume", str(out), "--max-steps", "3", *ARGS]) == 0
    assert f"removed {stale[0]}" in capsys.readouterr().err
    assert not stale[0].exists() and live.exists()


@pytest.mark.slow
def test_a_fresh_run_in_a_folder_that_holds_a_run_is_refused(tmp_path, capsys):
    out = run(tmp_path, max_steps=3, save_every=1, log_every=1)
    names = sorted(os.listdir(out))
    metrics = (out / "metrics.jsonl").read_bytes()
    # it used to start over, drop the old run's checkpoints and append to its metrics.jsonl
    argv = [
        "pretrain",
        "--model",
        "videomac_cnxv2_atto",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        *ARGS,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} holds an earlier run (checkpoint.pt, checkpoint-00000002.pt, summary.json, metrics.jsonl)" in err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(out)) == names and (out / "metrics.jsonl").read_bytes() == metrics
    assert load_checkpoint(str(out))["step"] == 3


@pytest.mark.slow
def test_the_resumed_folder_is_the_run(tmp_path, capsys):
    a = run(tmp_path, "a", stop_after=1, max_steps=3)
    # a moved run: its config.json still says output_dir=a; resuming used to write back into a
    b = tmp_path / "b"
    os.rename(a, b)
    assert main(["pretrain", "--resume", str(b), "--max-steps", "3", "--stop-after", "9", *ARGS]) == 0
    assert not a.exists() and load_checkpoint(str(b))["step"] == 3
    with open(b / "config.json") as f:
        assert json.load(f)["output_dir"] == str(b)
    # a copied run: resuming the copy leaves the original untouched
    c = tmp_path / "c"
    shutil.copytree(b, c)
    stamp = {p.name: p.stat().st_mtime_ns for p in b.iterdir()}
    assert main(["pretrain", "--resume", str(c / "checkpoint.pt"), "--max-steps", "4", *ARGS]) == 0
    assert load_checkpoint(str(c))["step"] == 4 and load_checkpoint(str(b))["step"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in b.iterdir()} == stamp
    # another --output-dir is refused, not silently ignored
    assert main(["pretrain", "--resume", str(c), "--output-dir", str(tmp_path / "d"), *ARGS]) == 2
    assert "continues the run in its own folder" in capsys.readouterr().err
    # a failed resume (another model) used to rewrite config.json first: the run could never resume again
    config = (c / "config.json").read_bytes()
    assert main(["pretrain", "--resume", str(c), "--model", "videomac_rn18", "--max-steps", "5", *ARGS]) == 2
    assert "model: 'videomac_cnxv2_atto' in the checkpoint, 'videomac_rn18' given" in capsys.readouterr().err
    assert (c / "config.json").read_bytes() == config
    assert main(["pretrain", "--resume", str(c), "--decoder-dim", "64", "--max-steps", "5", *ARGS]) == 2
    assert "decoder_dim: 32 in the checkpoint, 64 given" in capsys.readouterr().err
    assert (c / "config.json").read_bytes() == config
    assert main(["pretrain", "--resume", str(c), "--max-steps", "5", *ARGS]) == 0
    assert load_checkpoint(str(c))["step"] == 5
