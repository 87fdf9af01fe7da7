"""Every shell command in README.md and docs/ runs as written on a CPU, unless its block is marked.

A fenced block preceded by ``<!-- needs: REASON -->`` (a dataset, a GPU, several machines, a previous
step's output) is not run; every other command is, in a fresh temporary folder, as a real process. A
long command (pretraining) passes when it is still running without error after a time budget; the
commands that install or run the test suite itself are the README's set-up and are not re-run here.
"""

import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))
BUDGET_S = 25
FENCE = re.compile(r"(<!--\s*needs:[^>]*-->\s*)?```(?:bash|sh|shell|console)\n(.*?)```", re.S)
PLACEHOLDERS = ("/data/", "/path/to/", " PATH ", "$RANK", "$HOST", "ORG/NAME")
SETUP = ("pip install", "python -m pytest")  # the README's own set-up commands (CI runs them)


def commands():
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for m in FENCE.finditer(text):
            marked = bool(m.group(1))
            body = m.group(2).replace("\\\n", " ")
            for line in body.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if not line or line.startswith("#"):
                    continue
                for part in line.split(" && "):
                    yield page, part.strip(), marked


ALL = list(commands())
RUN = [(p, c) for p, c, marked in ALL if not marked and not c.startswith(SETUP)]


def test_unmarked_commands_need_no_data():
    bad = [(p, c) for p, c in RUN if any(s in f" {c} " for s in PLACEHOLDERS) or c.startswith("torchrun")]
    assert not bad, f"mark these blocks with <!-- needs: ... --> or make them runnable: {bad}"


@pytest.mark.slow
@pytest.mark.parametrize("page,cmd", RUN, ids=[f"{p}:{c[:40]}" for p, c in RUN])
def test_command_runs_as_written(page, cmd, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cwd = tmp_path
    if cmd.startswith(("python examples/", "python docs/", "python benchmarks/")):
        cwd = ROOT
    p = subprocess.Popen(
        cmd,
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        out, _ = p.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        assert "Traceback" not in out and "error:" not in out, f"{page}: `{cmd}` failed:\n{out[-3000:]}"
        return  # still running without error after the budget: a long job that started fine
    took = time.monotonic() - t0
    assert p.returncode == 0, f"{page}: `{cmd}` exited {p.returncode} after {took:.0f}s:\n{out[-3000:]}"
