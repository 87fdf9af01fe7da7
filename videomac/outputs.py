"""The one rule for where a videomac command may write, and what a pretraining run folder is.

Every writing command (pretrain, export, push, convert-official, visualize, eval, propagate, prepare, bench)
declares its inputs and outputs in one call to :func:`check_outputs` before it reads or writes anything.
An output is refused (:class:`OutputError`, one line naming the flag and both paths) when, after resolving
symlinks, it

* is, lies inside, or contains one of the command's inputs: an output can never overwrite what the
  command reads. A run folder given as input is protected by the next rule instead, so an output may lie
  in a new subfolder of it (push's default ``RUN/hub/ORG--NAME``);
* is a pretraining run folder, or one of a run folder's files (:func:`run_file`: ``checkpoint.pt``,
  ``checkpoint-<step>.pt``, ``encoder.safetensors``, ``config.json``, ...), unless the command owns that
  run (pretrain's ``--output-dir``; it still may not be another run's file).

Files are then written through :func:`videomac.files.atomic_file`: a crash leaves the old file or the
new one, and a symlink at the output path is replaced, never written through.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, List, Mapping, Optional

__all__ = [
    "OutputError",
    "check_outputs",
    "is_run_folder",
    "run_file",
    "checkpoint_candidates",
    "CHECKPOINT",
    "ENCODER",
    "METRICS",
    "CONFIG",
    "SUMMARY",
    "SKIPPED",
    "LOCK",
]

# ------------------------------------------------------------------------------------ the run folder
CHECKPOINT = "checkpoint.pt"  # the newest checkpoint; older ones kept are checkpoint-<step>.pt
ENCODER = "encoder.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
SKIPPED = "skipped.jsonl"  # inputs the data loader skipped (one JSON object per line, any process)
LOCK = "videomac.lock"  # the run folder's lock file (holder's pid, host, start time)
OLDER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pt$")
# what a run writes besides the above: its loss curve and reconstruction figures
_RUN_FILES = frozenset({CHECKPOINT, ENCODER, METRICS, CONFIG, SUMMARY, SKIPPED, LOCK, "loss.png", "reconstruction.png"})
_RUN_PATTERNS = (OLDER_CHECKPOINT, re.compile(r"^recon_epoch\d+\.png$"))


def checkpoint_candidates(run_dir: str) -> List[str]:
    """The checkpoints of a run folder that exist, newest first: ``checkpoint.pt``, then the older ones
    kept (``checkpoint-<step>.pt``, highest step first)."""
    out = [os.path.join(run_dir, CHECKPOINT)] if os.path.isfile(os.path.join(run_dir, CHECKPOINT)) else []
    try:
        names = os.listdir(run_dir)
    except OSError:
        return out
    older = sorted(((int(m.group(1)), n) for n in names if (m := OLDER_CHECKPOINT.match(n))), reverse=True)
    return out + [os.path.join(run_dir, n) for _, n in older if os.path.isfile(os.path.join(run_dir, n))]


def is_run_folder(path: str) -> bool:
    """Whether ``path`` is a pretraining run folder (a run's lock, checkpoints, or config + metrics)."""
    if not os.path.isdir(path):
        return False
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    if LOCK in names or checkpoint_candidates(path):
        return True
    return {CONFIG, METRICS} <= names


def run_file(path: str) -> Optional[str]:
    """The run folder ``path`` is a file of (by name: checkpoints, encoder, config, metrics, summary, lock,
    figures), or None. Symlinks are resolved."""
    real = _real(path)
    name = os.path.basename(real)
    if name in _RUN_FILES or any(p.match(name) for p in _RUN_PATTERNS):
        folder = os.path.dirname(real)
        if is_run_folder(folder):
            return folder
    return None


# --------------------------------------------------------------------------------------- the rule
class OutputError(ValueError):
    """An output that would overwrite an input or a run (the message names the flag and both paths)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _via(path: str) -> str:
    r = _real(path)
    return f" (which resolves to {r})" if r != os.path.abspath(path) else ""


def _local(path: Optional[str]) -> bool:
    return bool(path) and "://" not in str(path)


def _overlap(out: str, inp: str) -> Optional[str]:
    """How output ``out`` overlaps input ``inp`` ("is", "is inside", "contains"), or None; resolved paths."""
    o, r = _real(out), _real(inp)
    if o == r:
        return "is"
    if _within(o, r):
        return "is inside"
    if _within(r, o):
        return "contains"
    return None


def check_outputs(
    inputs: Iterable[Optional[str]] = (),
    files: Optional[Mapping[str, Optional[str]]] = None,
    folders: Optional[Mapping[str, Optional[str]]] = None,
    runs: Optional[Mapping[str, Optional[str]]] = None,
) -> None:
    """Apply the rule (module docstring) to a command's outputs, each given as ``{flag: path}`` (None: not
    written): ``files`` written as one file, ``folders`` written into, ``runs`` run folders the command owns.
    ``inputs`` are the paths it reads (None and URLs are skipped). Raises :class:`OutputError`."""
    ins = [os.fspath(p) for p in inputs if _local(p)]
    outs = [
        (f, os.fspath(p), kind)
        for kind, m in (("file", files), ("folder", folders), ("run", runs))
        for f, p in (m or {}).items()
        if p
    ]
    for flag, out, kind in outs:
        run = run_file(out)
        if run:
            raise OutputError(
                f"{flag} {out}{_via(out)} is a file of the pretraining run {run}; writing there would replace "
                f"the run's {os.path.basename(_real(out))}: choose a path outside the run's files"
            )
        if kind != "run" and is_run_folder(_real(out)):
            raise OutputError(
                f"{flag} {out} is a pretraining run folder (it holds a checkpoint, {LOCK} or {CONFIG} + "
                f"{METRICS}); writing there could replace the run's files: choose a new folder"
            )
        for inp in ins:
            how = _overlap(out, inp)
            if how == "is inside" and is_run_folder(_real(inp)):
                continue  # the run's own files are guarded above; a new subfolder of it is fine
            if how:
                raise OutputError(
                    f"{flag} {out}{_via(out)} {how} the input {inp}{_via(inp)}; writing there could overwrite it: "
                    "choose an output outside the inputs"
                )
