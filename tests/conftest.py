"""Fixtures every test file may use: torch threads set once, one tiny finished run for the whole session, and the
CLI run in this process. Plain helpers (the tiny config, snapshots, the one-line error check) are in helpers.py."""

import json
import os
import resource
import time

import pytest
import torch
from helpers import WeightsServer, copy_run, run_cli_process, snapshot, tiny_argv
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


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-durations",
        type=int,
        default=None,
        metavar="N",
        help="list the N tests that used the most CPU (this process and its children, setup to teardown): "
        "on a shared machine a test's CPU seconds say what its wall time would be on a quiet one",
    )


def _cpu_seconds() -> float:
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


_COSTS = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    _COSTS[item.nodeid] = cost = (_cpu_seconds() - cpu, time.perf_counter() - wall, "slow" in item.keywords)
    if os.environ.get("VIDEOMAC_TEST_COSTS"):  # a file to follow a long run by
        with open(os.environ["VIDEOMAC_TEST_COSTS"], "a") as f:
            f.write(f"{cost[0]:.2f}\t{cost[1]:.2f}\t{int(cost[2])}\t{item.nodeid}\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.getoption("--cpu-durations")
    if n is None or not _COSTS:
        return
    rows = sorted(_COSTS.items(), key=lambda kv: -kv[1][0])
    tr = terminalreporter
    tr.section(f"CPU seconds per test (top {n or len(rows)} of {len(rows)}; the load is {os.getloadavg()[0]:.1f})")
    for nodeid, (cpu, wall, slow) in rows[: n or None]:
        tr.write_line(f"{cpu:8.2f}s cpu {wall:8.2f}s wall {'slow' if slow else '    '}  {nodeid}")
    total_cpu, total_wall = sum(c for c, _, _ in _COSTS.values()), sum(w for _, w, _ in _COSTS.values())
    tr.write_line(f"{total_cpu:8.2f}s cpu {total_wall:8.2f}s wall       all {len(rows)} tests")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no CUDA device is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A :class:`helpers.WeightsServer` standing in for the authors' release page: TORCH_HOME (the download
    cache) in ``tmp_path/torch`` and VIDEOMAC_WEIGHTS_BASE_URL pointing at the server."""
    s = WeightsServer()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VIDEOMAC_WEIGHTS_BASE_URL", s.url)
    yield s
    s.stop()
