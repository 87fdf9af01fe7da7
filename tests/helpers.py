"""What many test files share: the tiny training config (one definition), running the CLI in this process or
in its own, the one-line error check, and byte-for-byte snapshots of folders. Fixtures built on these
(``tiny_run``, ``run_cli``, threads) live in conftest.py."""

import contextlib
import http.server
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The smallest run that trains for real: ConvNeXt-V2 atto at 64 px on the built-in videos, 8 pairs (2 steps an
# epoch). A test that needs other values passes them to tiny() / tiny_argv() and says why.
TINY = dict(
    model="videomac_cnxv2_atto",
    input_size=64,
    batch_size=4,
    decoder_dim=32,
    num_workers=0,
    synthetic_videos=8,
    synthetic_frames=4,
    pairs_per_video=1,
    progress=False,
    lr=1e-3,
    warmup_steps=1,
)


def tiny(**overrides) -> dict:
    """The tiny config as PretrainConfig keyword arguments, with ``overrides``."""
    return {**TINY, **overrides}


def tiny_argv(**overrides) -> list:
    """The tiny config as ``videomac pretrain`` options (``--device cpu`` too), with ``overrides``."""
    argv = []
    for key, value in {**TINY, "device": "cpu", **overrides}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    return argv


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one line of stderr (no traceback)."""
        return one_line_error(self.err)


def run_cli(*argv, capsys=None) -> CliResult:
    """``videomac ARGV`` in this process (``videomac.cli.main``): exit code (argparse's SystemExit included),
    stdout and stderr. Pass pytest's ``capsys`` where the command's output goes through handlers bound to it."""
    from videomac.cli import main

    argv = [str(a) for a in argv]
    if capsys is not None:
        capsys.readouterr()
        code = _exit_code(main, argv)
        got = capsys.readouterr()
        return CliResult(code, got.out, got.err)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_code(main, argv)
    return CliResult(code, out.getvalue(), err.getvalue())


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def run_cli_process(*argv, env=None, timeout=300, **kw) -> CliResult:
    """``python -m videomac.cli ARGV`` in its own process, one OpenMP thread unless ``env`` says otherwise."""
    cmd = [sys.executable, "-m", "videomac.cli", *[str(a) for a in argv]]
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=timeout, **kw)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(err: str) -> str:
    """stderr that is exactly one line and no traceback; that line."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def videomac_error_line(err: str) -> str:
    """The one ``videomac ...`` line of stderr, beside library warnings, and no traceback; that line."""
    lines = [x for x in err.strip().splitlines() if x.startswith("videomac ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` by its full path: a file's bytes, a link's target (not followed), or what
    else it is (a FIFO, a folder). Two snapshots are equal only if nothing there changed."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        mode = os.lstat(p).st_mode
        if stat.S_ISLNK(mode):
            out[str(p)] = ("link", os.readlink(p))
        elif stat.S_ISREG(mode):
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = stat.S_IFMT(mode)
    return out


def copy_run(run: Path, dst: Path) -> Path:
    """A copy of a finished run folder that a test may change."""
    shutil.copytree(run, dst, symlinks=True)
    return Path(dst)


class WeightsServer:
    """A real HTTP server on 127.0.0.1 serving ``files`` (name -> bytes). ``lengths`` overrides a name's
    Content-Length header (e.g. ``"abc"``); names in ``truncated`` announce 4096 more bytes than they send;
    ``hits`` lists the names asked for."""

    def __init__(self):
        self.files, self.lengths, self.truncated, self.hits = {}, {}, set(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                outer.hits.append(name)
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                length = outer.lengths.get(name, str(len(body) + (4096 if name in outer.truncated else 0)))
                self.send_response(200)
                self.send_header("Content-Length", length)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def put(self, name: str, obj) -> None:
        """Serve ``obj`` as ``torch.save`` writes it."""
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        self.files[name] = buf.getvalue()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def cached_files(tmp_path) -> list:
    """The files under ``tmp_path/torch`` (the TORCH_HOME the ``server`` fixture sets), relative to it."""
    root = Path(tmp_path) / "torch"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def group_gone(pgid: int, timeout: float = 20.0) -> bool:
    """Whether every process of the group ``pgid`` has exited within ``timeout`` seconds (a run's DataLoader
    workers must not outlive it)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
