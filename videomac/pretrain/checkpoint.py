"""Reading and writing pretraining runs: atomic checkpoint and encoder files, and the models they hold.

Used by the training loop and by publishing (export, push, visualize), so neither reaches into the other.

Safety and integrity (docs/pretraining.md, "Outputs and resuming"):

* Checkpoints hold only tensors and plain values (dicts, lists, tuples, str, int, float, bool, None),
  so every load is ``torch.load(weights_only=True)``: a file whose pickle would call a function
  (``os.system``...) is refused with :class:`UntrustedCheckpointError`, never unpickled. Files written by
  videomac before this format (numpy RNG state in the pickle) are refused the same way; a user who
  wrote one can pass ``trust_pickle=True`` (``--trust-pickle``) once: resuming rewrites it safely.
* Each checkpoint carries ``sha256``, a digest of its content; :func:`load_checkpoint` recomputes it, so
  a flipped byte is caught (:class:`CheckpointError`) rather than loaded.
* :func:`write_checkpoint` keeps the newest ``keep`` checkpoints (``checkpoint.pt``, older ones as
  ``checkpoint-<step>.pt``); :func:`load_latest` takes the newest intact one and says which it skipped.
* Writes go to ``<file>.tmp-<pid>``, are fsynced and renamed; a full disk is reported as such, and
  :func:`clean_stale_temporaries` removes the temporaries of processes that died (SIGKILL) mid-write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import pickle
import re
import zipfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from videomac.files import no_space_error
from videomac.pretrain.config import CHECKPOINT, PretrainConfig, checkpoint_candidates
from videomac.pretrain.model import VideoMAC

__all__ = [
    "atomic_file", "atomic_save", "save_encoder", "load_checkpoint", "load_latest", "write_checkpoint",
    "state_digest", "clean_stale_temporaries", "build_model", "load_pretrainer", "encoder_from_checkpoint",
    "CheckpointError", "UntrustedCheckpointError", "FORMAT_VERSION",
]  # fmt: skip

FORMAT_VERSION = 2  # 2: weights-only (no pickled Python objects), per-rank RNG states, sha256 digest
_DIGEST = "sha256"
_TMP = re.compile(r"\.tmp-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, damaged (digest mismatch) or not a checkpoint."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint whose pickle holds Python objects that ``torch.load(weights_only=True)`` refuses."""


# ------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_file(path: str, before_replace: Optional[Callable[[], None]] = None) -> Iterator[str]:
    """Yields a temporary path beside ``path``; once written it is fsynced and renamed over ``path``,
    so a crash leaves either the old file or the new one, never a partial one. ``before_replace`` runs
    after the fsync, just before the rename. A full disk (or quota) raises
    ``OSError(ENOSPC, "no space left on <mount> ... while writing <path>")``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(path, e) from e
        raise
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically (through a Python file object, so a write error is a real ``OSError``)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


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


def write_checkpoint(state: Dict, run_dir: str, keep: int = 2, previous_step: Optional[int] = None,
                     drop_older: bool = False) -> str:  # fmt: skip
    """Write ``state`` (with its digest) as ``run_dir/checkpoint.pt``, keeping the ``keep - 1`` before it.

    The new file is written and fsynced first; only then does the current ``checkpoint.pt`` (of step
    ``previous_step``, when known) become ``checkpoint-<step>.pt`` and the new one take its name, so a
    crash or a full disk at any point leaves every earlier checkpoint intact. ``drop_older``: the
    folder's other checkpoints belong to an earlier run this one replaces; they are removed once the
    new file is in place. Returns the path.
    """
    state = {k: v for k, v in state.items() if k != _DIGEST}
    state[_DIGEST] = state_digest(state)
    path = os.path.join(run_dir, CHECKPOINT)

    def rotate() -> None:
        if keep > 1 and previous_step is not None and os.path.isfile(path):
            os.replace(path, os.path.join(run_dir, f"checkpoint-{int(previous_step):08d}.pt"))

    with atomic_file(path, before_replace=rotate) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
    older = checkpoint_candidates(run_dir)[1 if drop_older else max(1, int(keep)) :]
    for old in older:
        if os.path.basename(old) != CHECKPOINT:
            os.remove(old)
    return path


def clean_stale_temporaries(folder: str) -> List[str]:
    """Remove ``*.tmp-<pid>`` files left in ``folder`` by processes that no longer run (killed while
    writing); returns their paths. Temporaries of live processes are left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP.search(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        p = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# ------------------------------------------------------------------------------------------- reading
def _untrusted_message(path: str, error: Exception) -> str:
    text = str(error)
    found = re.findall(r"GLOBAL ([\w.]+)", text)
    what = f"the Python object {found[0]!r}" if found else "Python objects other than tensors and plain values"
    legacy = ""
    if found and found[0].startswith(("numpy.", "videomac.", "argparse.")):
        legacy = (
            " Checkpoints written by videomac before the weights-only format (numpy RNG state in the "
            "pickle) look like this."
        )
    return (
        f"refusing to unpickle {path}: it holds {what}, which torch.load(weights_only=True) does not allow "
        f"(unpickling it could run arbitrary code).{legacy} If you wrote this file yourself and trust it, "
        "pass --trust-pickle (trust_pickle=True); resuming such a run rewrites its checkpoint in the safe format"
    )


def load_checkpoint(path: str, map_location="cpu", trust_pickle: bool = False, verify: bool = True) -> Dict:
    """A pretraining checkpoint (``path`` may be the run folder: its ``checkpoint.pt``).

    Loaded with ``weights_only=True`` (``trust_pickle=True``: ``weights_only=False``, for files you
    wrote). Raises :class:`UntrustedCheckpointError` for a pickle with other Python objects,
    :class:`CheckpointError` for a truncated or damaged file (``verify``: the stored ``sha256`` must
    match the content; checkpoints written before it was stored are not verified).
    """
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "Unsupported" in str(e):
            raise UntrustedCheckpointError(_untrusted_message(path, e)) from None
        raise CheckpointError(f"{path} is damaged (unpickling failed: {str(e).splitlines()[-1][:200]})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path} is truncated or damaged ({type(e).__name__}: {first})") from e
    if not isinstance(ck, dict) or "model" not in ck:
        raise CheckpointError(f"{path} is not a videomac pretraining checkpoint (no 'model' entry)")
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


def load_latest(path: str, map_location="cpu", trust_pickle: bool = False) -> Tuple[Dict, str, List[str]]:
    """The newest intact checkpoint of a run: ``(checkpoint, its path, problems with newer ones)``.

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
            return load_checkpoint(c, map_location, trust_pickle), c, problems
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
    model.load_state_dict(state, strict=True)
    model.videomac_config = ck["config"]
    model.videomac_step = ck.get("step")
    return model
