"""The shared test helpers do what the tests rely on: the tiny config's two spellings agree, the CLI runners
report the exit code and both streams, and a snapshot sees every change to a folder."""

import json
import os

import pytest
from helpers import TINY, one_line_error, snapshot, videomac_error_line
from helpers import run_cli as run_cli_here

import videomac


def test_the_tiny_run_was_trained_with_the_tiny_config(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert {k: cfg[k] for k in TINY} == TINY and cfg["device"] == "cpu" and cfg["max_steps"] == 2
    assert json.loads((tiny_run / "summary.json").read_text())["step"] == 2


def test_run_cli_gives_the_exit_code_and_both_streams(run_cli, tmp_path):
    for r in (run_cli("--version"), run_cli_here("--version")):  # argparse exits through SystemExit
        assert r.code == 0 and videomac.__version__ in r.out + r.err
    r = run_cli("pretrain", "--max-steps", "0", "--output-dir", tmp_path / "run")
    assert r.code == 2 and r.out == "" and "--max-steps must be at least 1, got 0" in r.error_line()
    assert not (tmp_path / "run").exists()


def test_the_one_line_checks_refuse_tracebacks_and_extra_lines():
    assert one_line_error("videomac x: error: bad\n") == "videomac x: error: bad"
    assert videomac_error_line("UserWarning: y\nvideomac x: error: bad\n") == "videomac x: error: bad"
    for err in ("Traceback (most recent call last):\nvideomac x: error: bad", "a\nb"):
        with pytest.raises(AssertionError):
            one_line_error(err)
    with pytest.raises(AssertionError):
        videomac_error_line("videomac x: error: a\nvideomac x: error: b")


def test_a_snapshot_sees_bytes_links_and_other_kinds_of_entries(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    os.symlink("d/f", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    before = snapshot(tmp_path)
    assert snapshot(tmp_path) == before
    changes = (
        lambda: (tmp_path / "d" / "f").write_bytes(b"abd"),  # same size, one byte
        lambda: (os.remove(tmp_path / "link"), os.symlink("d", tmp_path / "link")),  # retargeted
        lambda: (os.remove(tmp_path / "fifo"), (tmp_path / "fifo").write_bytes(b"")),  # another kind
        lambda: (tmp_path / "d" / "new").mkdir(),  # an empty folder
    )
    for change in changes:
        change()
        assert snapshot(tmp_path) != before
        before = snapshot(tmp_path)
