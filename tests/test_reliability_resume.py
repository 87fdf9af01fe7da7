"""Resuming is idempotent and checked (issue 29, case 8 and two of case 11): a finished run resumed says so
and changes no byte of its folder; a checkpoint whose digest is valid but whose position (step, epoch,
micro_done) no run can reach is refused in one line, as is a --max-steps below the steps done; a lock
file that is not a regular file is named; a list file with a byte-order mark is read. Real CLI runs on
real run folders."""

import json
import os

import pytest
from helpers import copy_run, one_line_error, run_cli_process, snapshot, tiny_argv

from videomac.cli import main
from videomac.pretrain.checkpoint import LOCK, load_checkpoint, write_checkpoint
from videomac.pretrain.data import FramePairDataset
from videomac.synthetic import render_video, write_frames

TINY = tiny_argv()


@pytest.fixture
def finished(tiny_run):
    """A tiny run that finished: 2 steps, by the real command in its own process (shared: read only)."""
    return tiny_run


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(finished):
    before = snapshot(finished)
    assert (finished / LOCK).read_bytes() == b""  # the holder's record lasts while it holds the lock
    # before: exit 0 and summary.json (final_loss null, pairs_per_s 0.0, no figure), checkpoint and encoder
    # rewritten; the run folder, its checkpoint, or the run with its own length given again: all say so
    for how in ([str(finished)], [str(finished / "checkpoint.pt")], [str(finished), "--max-steps", "2"]):
        r = run_cli_process("pretrain", "--resume", *how, "--no-progress")
        assert r.code == 0 and r.out == "", (r.out, r.err)
        assert r.error_line() == f"{finished} already finished at step 2; nothing to do"
        assert snapshot(finished) == before


def test_a_max_steps_below_the_steps_done_is_one_line(finished, capsys):
    before = snapshot(finished)
    assert main(["pretrain", "--resume", str(finished), "--max-steps", "1", "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (
        f"videomac pretrain: error: --max-steps 1 ends the run at step 1, before the 2 steps "
        f"{finished / 'checkpoint.pt'} has already done; ask for a longer run (or leave it out to keep the "
        "run's own length)"
    )
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("step", -5, "its step -5 is negative"),  # before: resumed, training 7 steps of a 2-step run
        ("step", 10**12, "its step 1000000000000 is beyond the 2 steps of the run that wrote it (total_steps)"),
        ("step", 1e12, "its 'step' entry is float, expected int"),
        ("epoch", -1, "its epoch -1 is not in [0, step 2] (every epoch takes at least one step)"),
        ("epoch", 3, "its epoch 3 is not in [0, step 2] (every epoch takes at least one step)"),
        ("micro_done", -1, "its micro_done -1 is negative"),
        ("micro_done", 2, "its micro_done 2 is not below the 2 micro-batches of its epoch"),
        ("micro_done", 10**9, "its micro_done 1000000000 is not below the 2 micro-batches of its epoch"),
        ("order_workers", 0, "its order_workers 0 is not an integer >= 1"),
        ("epoch_micro_batches", -3, "its epoch_micro_batches -3 is not an integer >= 1"),
    ],
)
def test_a_checkpoint_at_a_position_no_run_reaches_is_refused(finished, tmp_path, capsys, key, value, says):
    run = copy_run(finished, tmp_path / "run")
    ck = load_checkpoint(str(run))
    write_checkpoint(dict(ck, **{key: value}), str(run), keep=1)  # videomac's own writer: a valid digest
    assert load_checkpoint(str(run))[key] == value
    before = snapshot(run)
    assert main(["pretrain", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("videomac pretrain: error: ") and line.endswith(says), line
    assert f"{run / 'checkpoint.pt'} is not a usable videomac checkpoint" in line
    assert snapshot(run) == before


def test_a_run_that_failed_writing_its_outputs_finishes_them_without_a_new_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "summary.json").unlink()  # as if the disk filled while the last outputs were written
    (run / "encoder.safetensors").unlink()
    checkpoint = (run / "checkpoint.pt").read_bytes()
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert (run / "checkpoint.pt").read_bytes() == checkpoint  # no step trained: the same checkpoint
    assert json.loads((run / "summary.json").read_text())["step"] == 2
    assert (run / "encoder.safetensors").stat().st_size > 0
    # and now it is finished: nothing more to do
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert one_line_error(capsys.readouterr().err).endswith("already finished at step 2; nothing to do")


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_a_lock_file_that_is_not_a_regular_file_is_named(tmp_path, capsys, kind):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK
    if kind == "fifo":
        os.mkfifo(lock)  # before: "[Errno 22] Invalid argument", no name
    elif kind == "folder":
        lock.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("keep me")
        os.symlink(tmp_path / "elsewhere", lock)
    before = snapshot(tmp_path)
    assert main(["pretrain", *TINY, "--max-steps", "1", "--output-dir", str(run)]) == 2
    word = {"fifo": "a FIFO", "folder": "a folder", "symlink": "a symbolic link"}[kind]
    assert one_line_error(capsys.readouterr().err) == (
        f"videomac pretrain: error: {lock} is not a regular file ({word}); it is the run folder's lock file: "
        "remove it, or use another --output-dir"
    )
    assert snapshot(tmp_path) == before


def test_a_list_file_with_a_byte_order_mark_is_read(tmp_path):
    for i, name in enumerate(("a", "b")):
        write_frames(render_video(i, num_frames=4, size=(48, 48))[0], str(tmp_path / name))
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffa\r\nb\n".encode())  # as Notepad saves it: BOM and CRLF
    before = snapshot(tmp_path)
    ds = FramePairDataset(str(listing), input_size=32)
    # before: "\ufeffa (not found)" skipped, one video trained on
    assert ds.skipped == {} and ds.num_videos == 2 and len(ds) == 6
    assert sorted(c.name for c in ds.clips) == ["a", "b"]
    assert snapshot(tmp_path) == before
