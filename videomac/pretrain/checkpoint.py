"""Reading and writing pretraining runs: atomic checkpoint and encoder files, and the models they hold.

Used by the training loop and by publishing (export, push, visualize), so neither reaches into the other.

Safety and integrity (docs/pretraining.md, "Outputs and resuming"):

* Every file is read by :func:`videomac.pretrained.load_checkpoint`, the one reader of weights and
  checkpoints: its format is taken from its bytes, and checkpoints hold only tensors and plain values,
  so every load is ``torch.load(weights_only=True)``: a file whose pickle would call a function
  (``os.system``...) is refused with :class:`UntrustedCheckpointError`, never unpickled. Files written by
  videomac before this format (numpy RNG state in the pickle) are refused the same way; a user who
  wrote one can pass ``trust_pickle=True`` (``--trust-pickle``) once: resuming rewrites it safely.
  Anything that is not a checkpoint (text, an image, a safetensors file, a junk zip) is a one-line
  :class:`CheckpointError` (= :class:`~videomac.pretrained.WeightsError`) that never suggests trusting it.
* Each checkpoint carries ``sha256``, a digest of its content; :func:`load_checkpoint` recomputes it, so
  a flipped byte is caught (:class:`CheckpointError`) rather than loaded.
* :func:`write_checkpoint` keeps the newest ``keep`` checkpoints (``checkpoint.pt``, older ones as
  ``checkpoint-<step>.pt``); :func:`load_latest` takes the newest intact one and says which it skipped.
* Writes go through :func:`videomac.files.atomic_file` (an exclusively created temporary, fsynced and
  renamed); a full disk is reported as such, even from inside ``torch.save``, whose zip writer hides it.
* Every key a resume needs is checked for presence and type (:data:`RESUME_SCHEMA`), and its position
  (``step``, ``epoch``, ``micro_done``) for a range its run can reach (:func:`check_progress`), before it is used.
* A run folder is owned by one run at a time: :func:`run_lock` (``videomac.lock``); :func:`is_run_folder`
  (:mod:`videomac.outputs`) tells other commands not to write into one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from videomac.files import atomic_file
from videomac.outputs import LOCK, is_run_folder  # re-exported: the output rule owns what a run folder is
from videomac.pretrain.config import (
    CHECKPOINT,
    MAY_CHANGE_ON_RESUME,
    METRICS,
    SUMMARY,
    PretrainConfig,
    checkpoint_candidates,
    merge_settings,
    resume_target,
)
from videomac.pretrain.model import VideoMAC
from videomac.pretrained import UntrustedCheckpointError, WeightsError, check_weights
from videomac.pretrained import load_checkpoint as read_file

__all__ = [
    "resume_config",
    "atomic_save",
    "save_encoder",
    "load_checkpoint",
    "load_latest",
    "write_checkpoint",
    "state_digest",
    "check_schema",
    "check_progress",
    "build_model",
    "load_pretrainer",
    "encoder_from_checkpoint",
    "is_run_folder",
    "run_lock",
    "earlier_run",
    "close_inherited_locks",
    "CheckpointError",
    "UntrustedCheckpointError",
    "RunFolderBusy",
    "FORMAT_VERSION",
    "RESUME_SCHEMA",
    "LOCK",
]

FORMAT_VERSION = 2  # 2: weights-only (no pickled Python objects), per-rank RNG states, sha256 digest
_DIGEST = "sha256"

# Keys of a checkpoint and their types: every checkpoint has the first two; a resume needs them all.
SCHEMA = dict(model=dict, config=dict)
RESUME_SCHEMA = dict(SCHEMA, optimizer=dict, scaler=dict, step=int, epoch=int, micro_done=int)


# One error class for an unusable file, whichever route read it (videomac.pretrained.load_checkpoint);
# UntrustedCheckpointError (a subclass) is imported from there too.
CheckpointError = WeightsError


# ------------------------------------------------------------------------------------------- writing
def _write_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind a write failure: torch's zip writer reports a failed write as a RuntimeError
    ("unexpected pos ...") with the real OSError (ENOSPC, EDQUOT, EFBIG) only in its context."""
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def _torch_save(obj, tmp: str, path: str) -> None:
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        cause = _write_error(e)
        if cause is None:
            raise
        if cause.errno == errno.EFBIG:
            raise OSError(
                errno.EFBIG, f"file size limit reached (ulimit -f) while writing {path}; the previous file is intact"
            ) from e
        raise cause from e  # atomic_file turns ENOSPC / EDQUOT into its one-line message


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically; a full disk is an ``OSError(ENOSPC)`` naming the file."""
    with atomic_file(path) as tmp:
        _torch_save(obj, tmp, path)


def save_encoder(model: VideoMAC, path: str) -> None:
    """The dense online encoder as safetensors with timm key names (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.export_encoder().state_dict().items()}
    with atomic_file(path) as tmp:
        try:
            save_file(state, tmp, metadata={"architecture": model.encoder_name, "format": "pt"})
        except Exception as e:  # safetensors reports I/O errors as its own type
            if "code: 28" in str(e) or "No space left" in str(e):
                raise OSError(errno.ENOSPC, str(e)) from e
            raise


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(
            f"checkpoints hold tensors and plain values only (weights_only loading); got {type(obj).__name__}"
        )


def state_digest(state: Dict) -> str:
    """sha256 of a checkpoint's content (tensors' dtype, shape and bytes; plain values; order), without
    its own ``sha256`` entry. Equal before saving and after loading; any changed byte changes it."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != _DIGEST})
    return h.hexdigest()


def write_checkpoint(state: Dict, run_dir: str, keep: int = 2, previous_step: Optional[int] = None) -> str:
    """Write ``state`` (with its digest) as ``run_dir/checkpoint.pt``, keeping the ``keep - 1`` before it.

    The new file is written and fsynced first; only then does the current ``checkpoint.pt`` (of step
    ``previous_step``, when known) become ``checkpoint-<step>.pt`` and the new one take its name, so a
    crash or a full disk at any point leaves every earlier checkpoint intact. Returns the path.
    """
    state = {k: v for k, v in state.items() if k != _DIGEST}
    state[_DIGEST] = state_digest(state)
    path = os.path.join(run_dir, CHECKPOINT)

    def rotate() -> None:
        if keep > 1 and previous_step is not None and os.path.isfile(path):
            os.replace(path, os.path.join(run_dir, f"checkpoint-{int(previous_step):08d}.pt"))

    with atomic_file(path, before_replace=rotate) as tmp:
        _torch_save(state, tmp, path)
    older = checkpoint_candidates(run_dir)[max(1, int(keep)) :]
    for old in older:
        if os.path.basename(old) != CHECKPOINT:
            os.remove(old)
    return path


# ------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str, map_location="cpu", trust_pickle: bool = False, verify: bool = True) -> Dict:
    """A pretraining checkpoint (``path`` may be the run folder: its ``checkpoint.pt``), read by
    :func:`videomac.pretrained.load_checkpoint`, the reader of every weights or checkpoint file.

    Loaded with ``weights_only=True`` (``trust_pickle=True``: ``weights_only=False``, for files you
    wrote). Raises :class:`UntrustedCheckpointError` for a pickle with other Python objects,
    :class:`CheckpointError` (= :class:`~videomac.pretrained.WeightsError`) for any other unusable file:
    not a checkpoint, truncated, damaged (``verify``: the stored ``sha256`` must match the content;
    checkpoints written before it was stored are not verified).
    """
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    ck = read_file(path, trust_pickle, map_location=map_location, safetensors=False)
    if not isinstance(ck, dict) or "model" not in ck:
        raise CheckpointError(f"{path} is not a videomac pretraining checkpoint (no 'model' entry)")
    check_schema(ck, path)
    if verify and _DIGEST in ck:
        try:
            digest = state_digest(ck)
        except TypeError as e:  # a trusted legacy pickle can hold other types
            raise CheckpointError(f"{path}: {e}") from e
        if digest != ck[_DIGEST]:
            raise CheckpointError(
                f"{path} is damaged: its content does not match its sha256 "
                f"(stored {ck[_DIGEST][:12]}..., content {digest[:12]}...)"
            )
    return ck


def check_schema(ck: Dict, path: str, schema: Optional[Dict[str, type]] = None) -> None:
    """Each key of ``schema`` (default :data:`SCHEMA`; a resume: :data:`RESUME_SCHEMA`) is in ``ck``, of
    its type; otherwise :class:`CheckpointError` naming the key."""
    for key, kind in (schema or SCHEMA).items():
        if key not in ck:
            raise CheckpointError(f"{path} is not a usable videomac checkpoint: it has no {key!r} entry")
        value = ck[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{path} is not a usable videomac checkpoint: its {key!r} entry is "
                f"{type(value).__name__}, expected {kind.__name__}"
            )


def check_progress(ck: Dict, path: str, total_steps: Optional[int] = None, limit: Optional[str] = None) -> None:
    """A resumable checkpoint's position is one its run can have reached, else :class:`CheckpointError`
    naming the entry (a digest proves a file intact, not sensible): ``step`` in ``[0, total_steps]``, the
    length of the run that wrote it; each complete ``epoch`` took at least one step (``0 <= epoch <=
    step``); ``micro_done``, the micro-batches into the current epoch, in ``[0, epoch_micro_batches)``
    (recorded since this check; >= 0 before); ``order_workers`` and ``world_size`` >= 1.

    With ``total_steps`` (the resumed run's length), also ``step <= total_steps``; ``limit`` names the
    setting of the resume that made that length (``--max-steps 3``) for the message."""
    step, epoch, micro = ck["step"], ck["epoch"], ck["micro_done"]
    problem = None
    planned = ck.get("total_steps")  # the length of the run that wrote it: its loop ends there
    if step < 0:
        problem = f"its step {step} is negative"
    elif isinstance(planned, int) and step > planned:
        problem = f"its step {step} is beyond the {planned} steps of the run that wrote it (total_steps)"
    elif not 0 <= epoch <= step:
        problem = f"its epoch {epoch} is not in [0, step {step}] (every epoch takes at least one step)"
    elif micro < 0:
        problem = f"its micro_done {micro} is negative"
    else:
        for key, low in (("epoch_micro_batches", 1), ("order_workers", 1), ("world_size", 1)):
            value = ck.get(key, low)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                problem = f"its {key} {value!r} is not an integer >= {low}"
                break
        else:
            per_epoch = ck.get("epoch_micro_batches")
            if per_epoch is not None and micro >= per_epoch:
                problem = f"its micro_done {micro} is not below the {per_epoch} micro-batches of its epoch"
    if problem:
        raise CheckpointError(f"{path} is not a usable videomac checkpoint: {problem}")
    if total_steps is not None and step > total_steps:
        if limit:
            raise CheckpointError(
                f"{limit} ends the run at step {total_steps}, before the {step} steps {path} has already done; "
                "ask for a longer run (or leave it out to keep the run's own length)"
            )
        raise CheckpointError(
            f"{path} is not a usable videomac checkpoint: its step {step} is beyond the run's {total_steps} steps"
        )


def load_latest(path: str, map_location="cpu", trust_pickle: bool = False) -> Tuple[Dict, str, List[str]]:
    """The newest intact checkpoint of a run that a resume can use (:data:`RESUME_SCHEMA`):
    ``(checkpoint, its path, problems with newer ones)``.

    ``path``: a run folder (its checkpoints newest first) or a checkpoint file (that file first, then
    the run folder's others). Raises the first file's error when none is intact.
    """
    if os.path.isdir(path):
        candidates = checkpoint_candidates(path)
    else:
        folder = os.path.dirname(path) or "."
        candidates = [path] + [c for c in checkpoint_candidates(folder) if os.path.abspath(c) != os.path.abspath(path)]
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {path}")
    problems: List[str] = []
    errors: List[Exception] = []
    for c in candidates:
        try:
            ck = load_checkpoint(c, map_location, trust_pickle)
            check_schema(ck, c, RESUME_SCHEMA)
            check_progress(ck, c)
            return ck, c, problems
        except (CheckpointError, FileNotFoundError) as e:
            problems.append(str(e))
            errors.append(e)
    untrusted = [e for e in errors if isinstance(e, UntrustedCheckpointError)]
    if untrusted:
        tried = "" if len(errors) == 1 else f" ({len(errors)} checkpoints tried: {'; '.join(problems)})"
        raise UntrustedCheckpointError(str(untrusted[0]) + tried)
    raise CheckpointError(f"no intact checkpoint in {os.path.dirname(candidates[0]) or '.'}: " + "; ".join(problems))


def build_model(cfg: PretrainConfig) -> VideoMAC:
    return VideoMAC(
        cfg.model,
        mask_ratio=cfg.mask_ratio,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        gamma=cfg.gamma,
        norm_pix_loss=cfg.norm_pix_loss,
        motion_weight=cfg.motion_weight,
        drop_path_rate=cfg.drop_path,
        backend=cfg.backend,
        init=cfg.init,
    )


def _config(ck: Dict) -> PretrainConfig:
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in ck["config"].items() if k in names})


def load_pretrainer(path: str, map_location="cpu", trust_pickle: bool = False) -> Tuple[VideoMAC, PretrainConfig]:
    """The VideoMAC module (online and target) and config of a pretraining checkpoint."""
    ck = load_checkpoint(path, map_location, trust_pickle)
    cfg = _config(ck)
    model = build_model(cfg)
    check_weights(ck["model"], model.state_dict(), f"checkpoint {path}")  # names the key that does not fit
    model.load_state_dict(ck["model"])
    return model, cfg


def encoder_from_checkpoint(path: str, trust_pickle: bool = False) -> torch.nn.Module:
    """The dense online encoder (a timm model) of a ``videomac pretrain`` checkpoint or run folder."""
    import timm

    ck = load_checkpoint(path, trust_pickle=trust_pickle)
    prefix = "online.encoder.model."
    state = {k[len(prefix) :]: v for k, v in ck["model"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no online encoder weights (keys {prefix}*)")
    model = timm.create_model(ck["config"]["model"])
    check_weights(state, model.state_dict(), f"checkpoint {path}")
    model.load_state_dict(state, strict=True)
    model.videomac_config = ck["config"]
    model.videomac_step = ck.get("step")
    model.videomac_progress = {k: ck.get(k) for k in ("step", "epoch", "micro_done", "steps_per_epoch")}
    return model


# ------------------------------------------------------------------------------------------- run folders
class RunFolderBusy(ValueError):
    """The run folder is locked by another live run."""


def earlier_run(path: str) -> List[str]:
    """The files of ``path`` that hold an earlier run's results (a checkpoint, a summary, logged
    metrics); a fresh run must not mix its own with them."""
    found = checkpoint_candidates(path)
    for name in (SUMMARY, METRICS):
        p = os.path.join(path, name)
        if os.path.isfile(p) and os.path.getsize(p):
            found.append(p)
    return found


_HELD: set = set()  # lock file descriptors this process holds (a forked child inherits them)


def close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the parent's run-folder locks, so a lock ends with
    the process that took it, not with its last child."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[str]:
    """Own the run folder ``folder`` (created if missing) for the duration: an exclusive ``flock`` on
    ``folder/videomac.lock``, which records this process's pid, host and start time while it is held
    (emptied on release, so a run that changes nothing leaves the folder byte for byte as it was).
    Another run holding it raises :class:`RunFolderBusy` naming that run; the kernel releases a lock
    whose process died, so a stale lock is simply taken over. The lock file stays (it marks the folder
    as a run); one that is not a regular file (a FIFO, a folder, a link) is a ``ValueError`` naming it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK)
    try:
        # O_NONBLOCK: opening a FIFO put there must not wait for a writer
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        raise ValueError(
            f"{path} is not a regular file ({_kind(path)}); it is the run folder's lock file: "
            "remove it, or use another --output-dir"
        )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{folder} is in use by another run ({_holder(fd)}); wait for it to end or use another --output-dir"
            ) from None
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        _HELD.add(fd)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # still held: a run waiting for it never reads a half-emptied record
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def _kind(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return e.strerror or type(e).__name__
    for test, word in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return word
    return "not a plain file"


def resume_config(
    values: Dict, preset: Optional[str] = None, resume: str = "auto", trust_pickle: bool = False
) -> PretrainConfig:
    """A resumed run's config: the one saved in the newest intact checkpoint of ``resume`` (a checkpoint, a
    run folder, or ``"auto"``: the output folder's), not ``config.json``. ``values`` (None = unset) and
    ``preset`` may change only :data:`~videomac.pretrain.config.MAY_CHANGE_ON_RESUME`; any other setting
    that differs is refused, naming each. See :func:`~videomac.pretrain.config.resume_target` for the
    folder rules."""
    merged = merge_settings(values, preset)
    path, run_dir = resume_target(merged, resume)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    ck, used, _ = load_latest(path, trust_pickle=trust_pickle)
    saved = {k: v for k, v in ck["config"].items() if k in fields}
    differ = [
        f"{k}: {saved[k]!r} in the checkpoint, {v!r} given"
        for k, v in merged.items()
        if k in saved and k not in MAY_CHANGE_ON_RESUME and saved[k] != v
    ]
    if differ:
        raise ValueError(
            f"--resume {resume}: a resumed run keeps the settings of its checkpoint {used}, and these differ: "
            f"{'; '.join(differ)} (drop them, or start a new run in another --output-dir)"
        )
    return PretrainConfig(**{**saved, **merged, "resume": path, "output_dir": run_dir})
