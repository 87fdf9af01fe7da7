"""Fixtures every test file may use: torch threads set once, one tiny finished run for the whole session, and the
CLI run in this process. Plain helpers (the tiny config, snapshots, the one-line error check) are in helpers.py."""

import json
import os

import pytest
import torch
from helpers import copy_run, run_cli_process, snapshot, tiny_argv
from helpers import run_cli as _run_cli

# On a busy 2-core machine OpenMP's second thread makes the small tensor ops of these tests many times slower;
# subprocesses started by tests inherit the same setting. VIDEOMAC_TEST_THREADS=N raises it on a quiet machine.
THREADS = int(os.environ.get("VIDEOMAC_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """Torch on THREADS threads for the whole session (tests used to ask for this one file at a time)."""
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Kept for tests that still ask: the session runs on THREADS threads already (see ``torch_threads``)."""
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny pretraining run that finished (2 steps of helpers.TINY), made once by the real command in its
    own process and shared by every test that only reads a run (export, push, hub, visualize, resume, safe
    reading, the output rule). A test that changes a run works on ``tiny_run_copy``; at the end of the session
    this folder must be byte-for-byte what the run left."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    r = run_cli_process("pretrain", *tiny_argv(), "--max-steps", "2", "--output-dir", run)
    assert r.code == 0, r.err[-3000:]
    assert json.loads((run / "summary.json").read_text())["step"] == 2
    before = snapshot(run)
    yield run
    assert snapshot(run) == before, "a test changed the shared tiny_run: work on tiny_run_copy instead"


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A copy of ``tiny_run`` (tmp_path / "run") that the test may change."""
    return copy_run(tiny_run, tmp_path / "run")


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv)``: ``videomac ARGV`` in this process; a helpers.CliResult (code, out, err, error_line())."""

    def run(*argv):
        return _run_cli(*argv, capsys=capsys)

    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no CUDA device is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
