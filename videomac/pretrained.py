"""Weights for ``pretrained=True`` and every weights file a user loads.

* Registry entries on the Hugging Face Hub (``format: timm``) are found through huggingface_hub (its
  cache, ``HF_HUB_OFFLINE=1`` and revisions apply) and their sha256 is verified.
* The authors' released checkpoints (``format: authors``) are downloaded into torch.hub's cache
  (``torch.hub.get_dir()/checkpoints/videomac``, i.e. ``$TORCH_HOME``), read with
  ``torch.load(weights_only=True)``, converted in memory and kept there as safetensors keyed by the
  download's sha256. ``VIDEOMAC_WEIGHTS_BASE_URL`` or ``pretrained_cfg_overlay=dict(url=...)`` point
  elsewhere.
* Every file given as weights or checkpoint (``pretrained_cfg_overlay=dict(file=...)``, ``--weights``,
  ``--resume``, export, visualize, ``convert-official`` input, downloads) is read by one function,
  :func:`load_checkpoint`: the format from the bytes (torch zip, legacy torch pickle, safetensors),
  one error class (:class:`WeightsError`; :class:`UntrustedCheckpointError`, with the ``--trust-pickle``
  advice, only for a real pickle that needs other Python objects), a safetensors file's keys, dtypes
  and shapes checked from its header before any tensor is read. Weights are then checked before any
  work: floating point, finite, keys and shapes matching the model (:func:`check_weights`).
* A download is cached only when its body reads as a checkpoint; a cached file that fails to load is
  removed with its ``.sha256`` (:func:`forget`); URLs must be http(s), file names plain, and the
  cache path inside the cache.

The authors' MinkowskiEngine checkpoints, without MinkowskiEngine: their pretraining checkpoint
(``checkpoint-{epoch}.pth`` of their ``save_model_distill``: ``model_online`` / ``online_without_ddp`` /
... / ``args``) or a bare encoder state_dict (what their ``tools/convert_pth.py`` writes, and what the
released ``mac-*.pth`` are) both give the encoder (:func:`official_state_dict`); the decoder side is
dropped. Their tensor layouts are common to every family (:func:`fit_tensor`, :func:`kernel_to_dense`):
MinkowskiEngine conv kernels ``(k*k, C_in, C_out)`` (``(C_in, C_out)`` for a 1x1 conv), depthwise
kernels ``(k*k, C)``, biases and GRN ``gamma``/``beta`` ``(1, C)``; the dense weight of a kernel is
``kernel.permute(2, 1, 0).reshape(C_out, C_in, k, k).transpose(-1, -2)``. Their names are each family's
own: its file declares a ``checkpoint_filter_fn(state_dict, model)`` (timm's convention) with
:func:`register_checkpoint_filter`, and :func:`convert_official` finds it through the model's class.

Torch files are read with ``torch.load(weights_only=True)``, allowing exactly one non-tensor type,
``argparse.Namespace`` (the ``args`` their checkpoints hold). Anything else is refused naming the type;
``--trust-pickle`` loads such a file you trust (unpickling can run arbitrary code).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

import torch

from videomac.files import atomic_file
from videomac.presets import preset_for_model
from videomac.registry import WeightEntry, find_entry, is_plain_file_name, registry_path

__all__ = [
    "WeightsError",
    "WeightsNotPublishedError",
    "WeightsDownloadError",
    "UntrustedCheckpointError",
    "sha256_file",
    "fetch_weights",
    "resolve_pretrained",
    "read_state_dict",
    "check_weights",
    "expected_state",
    "load_checkpoint",
    "file_format",
    "forget",
    "official_state_dict",
    "convert_official",
    "register_checkpoint_filter",
    "checkpoint_filter_for",
    "map_checkpoint",
    "fit_tensor",
    "headless_model",
    "kernel_to_dense",
    "cache_dir",
    "download_cached",
    "authors_weights",
    "save_converted",
]

BASE_URL_ENV = "VIDEOMAC_WEIGHTS_BASE_URL"  # replaces everything before the file name of the authors' URLs
_DROP = ("mask_token", "proj", "decoder", "pred")  # the pretraining decoder side of their VideoMAC
SAFE_GLOBALS = [argparse.Namespace]  # their checkpoints' ``args``


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, not floating point, not finite, or not this model's."""


class WeightsNotPublishedError(ValueError):
    """``pretrained=True`` for a model or tag that has no published weights."""


class WeightsDownloadError(ValueError):
    """The authors' release could not be downloaded or converted; nothing was cached."""


class UntrustedCheckpointError(WeightsError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses because it holds other Python objects."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading and checking weights files

_TRUST_HINT = (
    " If you trust this file, pass --trust-pickle (trust_pickle=True) to load it with weights_only=False: "
    "unpickling can run arbitrary code."
)
_LEGACY = (
    " Checkpoints written by videomac before the weights-only format (numpy RNG state in the pickle) look like "
    "this; resuming such a run once with --trust-pickle rewrites its checkpoint in the safe format."
)
_NOT_A_CHECKPOINT = "not a PyTorch checkpoint or safetensors file"


def file_format(path: str) -> Optional[str]:
    """What the bytes of ``path`` are, whatever its name: ``"torch"`` (torch.save's zip), ``"torch-legacy"``
    (a pickle stream, torch's format before 1.6), ``"safetensors"`` (an 8-byte little-endian header length
    that fits the file, then ``{``) or None. Raises :class:`WeightsError` for a directory, an empty or
    unreadable file; FileNotFoundError for a missing one."""
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a directory, expected a weights file (.pth/.pt/.safetensors)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch the file again")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # PROTO 2..5
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return None


def _unreadable(path: str, detail: str) -> WeightsError:
    return WeightsError(f"{_NOT_A_CHECKPOINT}: {path} ({' '.join(detail.split())[:240]})")


def _untrusted(path: str, found: str, trust_hint: bool) -> UntrustedCheckpointError:
    legacy = _LEGACY if found.startswith(("numpy.", "videomac.")) and trust_hint else ""
    return UntrustedCheckpointError(
        f"{path} holds the Python object {found!r}, which torch.load(weights_only=True) refuses (only tensors, "
        f"plain values and argparse.Namespace are allowed), so it was not loaded.{legacy}"
        + (_TRUST_HINT if trust_hint else " Save its state_dict as .safetensors where you trust it.")
    )


# safetensors' dtype names (its header) as torch dtypes, for checking a file before reading it
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _read_safetensors(path: str, check: Optional[Callable[[Dict[str, torch.Tensor]], None]], device) -> Dict:
    from safetensors import safe_open

    with safe_open(path, "pt", device=str(device)) as f:
        if check is not None:  # keys, dtypes and shapes from the header: refuse before reading any tensor
            meta = {}
            for k in f.keys():
                sl = f.get_slice(k)
                if sl.get_dtype() not in _ST_DTYPES:
                    raise WeightsError(f"{path}: {k} is {sl.get_dtype()}, expected floating point weights")
                meta[k] = torch.empty(sl.get_shape(), dtype=_ST_DTYPES[sl.get_dtype()], device="meta")
            check(meta)
        return {k: f.get_tensor(k) for k in f.keys()}


def load_checkpoint(
    path: str,
    trust_pickle: bool = False,
    trust_hint: bool = True,
    *,
    map_location="cpu",
    safetensors: bool = True,
    check: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None,
):
    """Read any file given as weights or checkpoint: THE reader of every route (overlay ``file=``,
    ``--weights``, ``--resume``, export, visualize, convert-official, downloads).

    The format is taken from the bytes (:func:`file_format`), not the name. A torch file is loaded with
    ``weights_only=True`` (``argparse.Namespace`` allowed); one holding other Python objects is an
    :class:`UntrustedCheckpointError` naming the object (``trust_hint``: the route offers
    ``--trust-pickle``; ``trust_pickle=True`` loads it with ``weights_only=False``, for files you trust).
    A safetensors file (refused when ``safetensors=False``) gives its dict of tensors; ``check`` is called
    with its keys, dtypes and shapes as meta tensors before any tensor is read. Anything else (text,
    an image, a junk zip, a truncated file) is one :class:`WeightsError` starting "not a PyTorch checkpoint
    or safetensors file: PATH", never the ``--trust-pickle`` advice.
    """
    fmt = file_format(path)
    if fmt is None:
        with open(path, "rb") as f:
            head = f.read(16)
        raise _unreadable(path, f"{os.path.getsize(path)} bytes starting {head!r}")
    if fmt == "safetensors" and not safetensors:
        raise WeightsError(
            f"{path} is a safetensors weights file, not a videomac pretraining checkpoint (a run folder or its "
            "checkpoint.pt); load safetensors weights with --weights or pretrained_cfg_overlay=dict(file=...)"
        )
    try:
        if fmt == "safetensors":
            return _read_safetensors(path, check, map_location)
        if trust_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise _untrusted(path, found[0], trust_hint) from None
        raise _unreadable(path, f"a damaged {fmt} file: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # the one boundary: whatever a parser raises on damaged bytes is this file's error
        kind = "a safetensors file" if fmt == "safetensors" else "a torch zip" if fmt == "torch" else "a pickle"
        raise _unreadable(path, f"{kind}, truncated or damaged: {e or type(e).__name__}") from None


def _unwrap(sd):
    """The state_dict inside ``state_dict`` / ``model`` / ``encoder`` / ``module`` containers, without
    ``module.`` prefixes."""
    for key in ("state_dict", "model", "encoder", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if isinstance(sd, dict) and sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(
    path: str,
    expected: Optional[Dict[str, torch.Tensor]] = None,
    source: Optional[str] = None,
    optional: Callable[[str], bool] = lambda k: False,
) -> Dict[str, torch.Tensor]:
    """A dense state_dict from ``path`` (safetensors or a weights-only torch file, whatever its name;
    ``state_dict`` / ``model`` / ``encoder`` containers and ``module.`` prefixes unwrapped). With
    ``expected`` (a model's state_dict, meta tensors will do) it is checked by :func:`check_weights`; a
    safetensors file's keys, dtypes and shapes before any tensor is read. All errors are one-line
    :class:`WeightsError`."""
    source = source or f"weights file {path}"

    def header(meta):
        check_weights(_unwrap(meta), expected, source, optional, values=False)

    sd = _unwrap(load_checkpoint(path, trust_hint=False, check=header if expected is not None else None))
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        what = f"a dict with keys {sorted(map(str, sd))[:8]}" if isinstance(sd, dict) else type(sd).__name__
        raise WeightsError(f"{path} does not hold a state dict of tensors (found {what})")
    if expected is not None:
        check_weights(sd, expected, source, optional)
    return sd


def check_values(
    sd: Dict[str, torch.Tensor], source: str, expected: Optional[Dict[str, torch.Tensor]] = None, finite: bool = True
) -> None:
    """Every tensor floating point (unless the model's own is not) and finite; names the first bad key."""
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise WeightsError(f"{source}: {k} is a {type(v).__name__}, not a tensor")
        want = expected.get(k) if expected is not None else None
        if not v.is_floating_point():
            if want is not None and not want.is_floating_point():
                continue
            raise WeightsError(
                f"{source}: {k} is {str(v.dtype).replace('torch.', '')}, expected floating point weights "
                f"(a quantized, integer or corrupted file; pass the float weights)"
            )
        if finite and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise WeightsError(f"{source}: {k} holds {bad} NaN/inf values of {v.numel()}: the weights are broken")


def check_weights(
    sd: Dict[str, torch.Tensor],
    expected: Optional[Dict[str, torch.Tensor]],
    source: str,
    optional: Callable[[str], bool] = lambda k: False,
    values: bool = True,
) -> None:
    """Refuse weights that are not floating point, not finite, or whose keys/shapes differ from
    ``expected`` (a model's state_dict, meta tensors will do); ``optional`` keys may be missing.
    ``values=False``: dtypes, keys and shapes only (``sd`` may be meta tensors, e.g. a file's header)."""
    check_values(sd, source, expected, finite=values)
    if expected is None:
        return
    unexpected = [k for k in sd if k not in expected]
    missing = [k for k in expected if k not in sd and not optional(k)]
    shapes = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]

    def show(ks: List[str]) -> str:
        return ", ".join(ks[:4]) + (f", ... ({len(ks)} in all)" if len(ks) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        k = shapes[0]
        more = f" ({len(shapes)} in all)" if len(shapes) > 1 else ""
        parts.append(
            f"shape mismatch: {k} is {tuple(sd[k].shape)} in the file, {tuple(expected[k].shape)} in the model" + more
        )
    if parts:
        raise WeightsError(f"{source} does not match the model: " + "; ".join(parts))


def headless_model(model_name: str) -> torch.nn.Module:
    """``timm.create_model(model_name, num_classes=0)`` with meta tensors: its structure, no memory."""
    import timm

    with torch.device("meta"):
        return timm.create_model(model_name, num_classes=0)


def expected_state(model_name: str) -> Dict[str, torch.Tensor]:
    """The state_dict of the headless ``model_name`` as meta tensors: keys, shapes, dtypes, no memory."""
    return headless_model(model_name).state_dict()


def _is_head(k: str) -> bool:
    return k.split(".")[0] in ("fc", "head") and not k.startswith("head.norm.")


# ---------------------------------------------------------------------------------------------
# The authors' checkpoints


def kernel_to_dense(kernel: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """A MinkowskiEngine kernel as the dense conv weight of ``target_shape`` (C_out, C_in/groups, k, k)."""
    c_out, c_in, kh, kw = target_shape
    if kh != kw:
        raise WeightsError(f"only square kernels are supported, target {tuple(target_shape)}")
    k = kh
    if kernel.ndim == 3:  # (k*k, C_in, C_out)
        if kernel.shape != (k * k, c_in, c_out):
            raise WeightsError(f"kernel {tuple(kernel.shape)} does not fit a conv of weight {tuple(target_shape)}")
        return kernel.permute(2, 1, 0).reshape(c_out, c_in, k, k).transpose(-1, -2).contiguous()
    if kernel.ndim == 2 and c_in == 1 and kernel.shape == (k * k, c_out):  # depthwise (k*k, C)
        return kernel.permute(1, 0).reshape(c_out, 1, k, k).transpose(-1, -2).contiguous()
    if kernel.ndim == 2 and k == 1 and kernel.shape == (c_in, c_out):  # 1x1 conv stored without the volume
        return kernel.t().reshape(c_out, c_in, 1, 1).contiguous()
    raise WeightsError(f"kernel {tuple(kernel.shape)} does not fit a conv of weight {tuple(target_shape)}")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _select(obj) -> Tuple[Dict[str, torch.Tensor], str]:
    """The online model's state_dict inside a checkpoint, and where it was found."""
    if isinstance(obj, dict):
        for key in ("online_without_ddp", "model_online", "model", "state_dict"):
            if key in obj and _is_state_dict(obj[key]):
                return obj[key], key
    if _is_state_dict(obj):
        return obj, "state_dict"
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise WeightsError(
        f"no state_dict found (expected 'online_without_ddp', 'model_online' or a dict of tensors; got {keys})"
    )


def official_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The encoder state_dict inside a checkpoint of the authors' code (either released layout), with
    ``module.``/``encoder.`` prefixes removed and the decoder side (``mask_token``, ``proj``, ``decoder``,
    ``pred``) dropped; every value checked floating point and finite."""
    sd, _ = _select(obj)
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(module\.)+", "", k)
        if k.split(".")[0] in _DROP:
            continue
        out[re.sub(r"^encoder\.", "", k)] = v
    check_values(out, "checkpoint")
    return out


def fit_tensor(key: str, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The checkpoint tensor ``v`` in the target ``shape``: MinkowskiEngine kernels (``*.kernel``) made dense,
    singleton dims reshaped ((1, C) biases and GRN parameters, Linear (out, in) -> 1x1 conv (out, in, 1, 1))."""
    if key.endswith(".kernel"):
        return kernel_to_dense(v, shape)
    if v.shape == shape:
        return v
    if [d for d in v.shape if d != 1] == [d for d in shape if d != 1]:
        return v.reshape(shape)
    raise WeightsError(f"{key}: checkpoint shape {tuple(v.shape)} does not fit {tuple(shape)}")


class Converted(dict):
    """A converted state_dict, as a family's ``checkpoint_filter_fn`` returns it; ``filled``: the keys the
    checkpoint cannot hold, given the model's initial values."""

    filled: Tuple[str, ...] = ()


def architecture(model: torch.nn.Module) -> str:
    """The timm name ``model`` was created by (its class name otherwise), for messages."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def map_checkpoint(
    sd: Dict[str, torch.Tensor],
    model: torch.nn.Module,
    rename: Callable[[str], Optional[str]],
    hint: Callable[[List[str], List[str]], str] = lambda unknown, missing: "",
    init: Optional[Dict[str, torch.Tensor]] = None,
) -> Converted:
    """``model``'s dense state_dict from an authors' encoder state_dict ``sd``: each key named by the family's
    ``rename`` (None: not the family's), its tensor fitted (:func:`fit_tensor`). ``init``: keys the authors'
    encoder does not have, with the values the model starts from (recorded in ``filled``). Any other unknown
    or missing key is one :class:`WeightsError` naming them, with the family's ``hint``."""
    target = model.state_dict()
    out, unknown = Converted(), []
    for k, v in sd.items():
        name = rename(k)
        if name is None or name not in target:
            unknown.append(k)
            continue
        out[name] = fit_tensor(k, v, target[name].shape).to(target[name].dtype).contiguous()
    init = {k: v for k, v in (init or {}).items() if k in target and k not in out}
    missing = [k for k in target if k not in out and k not in init]
    if unknown or missing:
        raise WeightsError(
            f"checkpoint does not match {architecture(model)}: unknown keys {sorted(unknown)}; missing keys "
            f"{sorted(missing)}" + hint(unknown, missing)
        )
    done = Converted((k, out[k] if k in out else init[k]) for k in target)
    done.filled = tuple(init)
    return done


# Families declare how the authors' checkpoints map onto their models (``checkpoint_filter_fn``, as timm's
# family files do); the weights layer finds it through the model's class, never by the model's name.
_FILTERS: Dict[type, Callable] = {}


def register_checkpoint_filter(cls: type, fn: Callable) -> None:
    """``fn(state_dict, model) -> state_dict`` converts the authors' checkpoints for models of class ``cls``."""
    _FILTERS[cls] = fn


def checkpoint_filter_for(model: torch.nn.Module) -> Callable:
    """The ``checkpoint_filter_fn`` declared for ``model``'s class (or its nearest base class)."""
    fn = next((_FILTERS[c] for c in type(model).__mro__ if c in _FILTERS), None)
    if fn is None:
        raise WeightsError(
            f"{architecture(model)} ({type(model).__name__}) has no conversion of the authors' checkpoints; "
            "use a videomac_* model"
        )
    return fn


def convert_official(obj, model_name: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert to the dense state_dict of ``timm.create_model(model_name, num_classes=0)`` with the
    ``checkpoint_filter_fn`` its family declares; returns it and the keys filled from the model's
    initialisation (only a ConvNeXt's pooled ``head.norm``, which the authors' encoders do not have).
    Non-float or non-finite values, a ConvNeXt version mismatch and any other unknown or missing key are
    errors naming them."""
    model = headless_model(model_name)
    out = checkpoint_filter_for(model)(obj, model)
    return dict(out), list(getattr(out, "filled", []))


# ---------------------------------------------------------------------------------------------
# Downloads: the authors' release, into torch.hub's cache


def cache_dir() -> str:
    """``torch.hub.get_dir()/checkpoints/videomac`` (``$TORCH_HOME``, default ``~/.cache/torch``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", "videomac")


def _manual(url: str, model: str) -> str:
    return (
        f"Manual route: download {url} on a connected machine, then `videomac convert-official FILE --model {model} "
        f"--out {model}.safetensors` and load it with timm.create_model('{model}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='{model}.safetensors'))"
    )


def _content_length(value: Optional[str]) -> Optional[int]:
    """The announced size, or None when absent or not a number (as http.client treats it)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _fetch(url: str, dest: str, pinned: Optional[str], what: str, model: str, progress: bool = True) -> str:
    """Stream ``url`` into ``dest`` through an atomic temporary; returns the sha256. A short body, an HTTP
    error, a pinned sha256 that differs or a body that is no checkpoint (an error page) leaves nothing at
    ``dest``."""
    import http.client

    from tqdm import tqdm

    h = hashlib.sha256()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "videomac"})
        with urllib.request.urlopen(req, timeout=60) as r, atomic_file(dest) as tmp, open(tmp, "wb") as f:
            total = _content_length(r.headers.get("Content-Length"))
            done = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=os.path.basename(dest),
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            if total is not None and done != total:
                raise WeightsDownloadError(
                    f"{what}: the download of {url} was cut short ({done} of {total} bytes); nothing was cached. "
                    + _manual(url, model)
                )
            if pinned and h.hexdigest() != pinned:
                raise WeightsDownloadError(
                    f"{what}: sha256 mismatch for {url}: the registry pins {pinned}, the download has {h.hexdigest()}; "
                    "refused, nothing was cached"
                )
            f.flush()
            if done == 0 or file_format(tmp) is None:  # a proxy's error page, a login form: never cached
                with open(tmp, "rb") as g:
                    head = g.read(16)
                raise WeightsDownloadError(
                    f"{what}: {url} sent {done} bytes starting {head!r}, {_NOT_A_CHECKPOINT}; nothing was cached. "
                    + _manual(url, model)
                )
    except urllib.error.HTTPError as e:
        raise WeightsDownloadError(f"{what}: {url} answered HTTP {e.code} {e.reason}. " + _manual(url, model)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsDownloadError(
            f"{what}: could not download {url} ({' '.join(str(reason).split()) or type(e).__name__}; offline?). "
            + _manual(url, model)
        ) from None
    return h.hexdigest()


def _cache_path(url: str, filename: Optional[str], what: str) -> str:
    """Where ``url`` is cached: ``cache_dir()/downloads/<url hash>/<filename>``, refused unless ``url`` is
    http(s), ``filename`` a plain file name, and the path inside the cache."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https") or not urllib.parse.urlparse(url).netloc:
        raise WeightsDownloadError(f"{what}: {url!r} is not an http(s) URL; only http(s) downloads are cached")
    if filename is None:
        filename = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        filename = filename if is_plain_file_name(filename) else "download"
    if not is_plain_file_name(filename):
        raise WeightsDownloadError(f"{what}: file name {filename!r} is not a plain file name (no '/', '..')")
    root = os.path.realpath(cache_dir())
    path = os.path.join(root, "downloads", hashlib.sha256(url.encode()).hexdigest()[:16], filename)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise WeightsDownloadError(f"{what}: the download's path {path} resolves outside the cache {root}")
    return path


def download_cached(
    url: str, filename: Optional[str] = None, pinned: Optional[str] = None, what: str = "weights", model: str = "MODEL"
) -> Tuple[str, str]:
    """The file at ``url`` in the cache (downloaded once, with a progress bar) and its sha256, which is
    printed on download and written beside it as ``<file>.sha256``; ``pinned`` refuses any other file.
    Only a body that reads as a checkpoint is kept; a cached file that does not (left by an older
    videomac) is dropped and downloaded again."""
    path = _cache_path(url, filename, what)
    side = path + ".sha256"
    if os.path.isfile(path) and os.path.isfile(side):
        with open(side) as f:
            digest = (f.read().split() or [""])[0]
        try:
            usable = file_format(path) is not None and len(digest) == 64
        except WeightsError:
            usable = False
        if not usable:
            forget(path)
        elif pinned and digest != pinned:
            raise WeightsDownloadError(
                f"{what}: sha256 mismatch for the cached {path} (from {url}): the registry pins {pinned}, the file has "
                f"{digest}; delete it to download again"
            )
        else:
            return path, digest
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = _fetch(url, path, pinned, what, model)
    with atomic_file(side) as tmp, open(tmp, "w") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    print(f"{what}: downloaded {url} into {path}, sha256 {digest}", file=sys.stderr)
    return path, digest


def forget(path: str) -> None:
    """Remove a cached download and its ``.sha256``: a file that did not load is never taken again."""
    for p in (path, path + ".sha256"):
        if os.path.lexists(p):
            os.remove(p)


def save_converted(sd: Dict[str, torch.Tensor], out_path: str, model_name: str, meta: Dict[str, str]) -> str:
    """Write converted weights as safetensors, atomically, with their provenance in the metadata."""
    from safetensors.torch import save_file

    if os.path.isdir(out_path):
        raise WeightsError(f"--out {out_path} is a directory; pass a file name such as {model_name}.safetensors")
    if os.path.dirname(os.path.abspath(out_path)):
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    meta = dict(meta, architecture=model_name, format="pt")
    with atomic_file(out_path) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=meta)
    return out_path


def authors_weights(entry: WeightEntry, model_name: str, url: str) -> str:
    """Download (once), check, convert (once) an authors' release; returns the cached safetensors path."""
    raw, digest = download_cached(url, entry.filename, entry.sha256, entry.name, model_name)
    out = os.path.join(cache_dir(), "converted", digest, f"{model_name}.safetensors")
    if os.path.isfile(out):
        return out
    try:
        obj = load_checkpoint(raw, trust_hint=False)
        source = _select(obj)[1]
        sd, filled = convert_official(obj, model_name)
    except ValueError as e:
        forget(raw)  # a file that is not the model's weights must not be taken by the next load
        raise WeightsDownloadError(
            f"{entry.name}: {url} is not usable weights for {model_name}: {' '.join(str(e).split())}. Nothing was "
            "cached. " + _manual(url, model_name)
        ) from None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = dict(source=source, filled_from_init=",".join(filled), source_url=url, source_sha256=digest)
    return save_converted(sd, out, model_name, meta)


def authors_url(entry: WeightEntry) -> str:
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{entry.filename}" if base else str(entry.url)


# ---------------------------------------------------------------------------------------------
# pretrained=True


def fetch_weights(entry: WeightEntry) -> str:
    """Download (or find in the Hugging Face cache) a Hub registry entry's file and check its sha256."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(entry.hf_hub_id, entry.filename, revision=entry.revision)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise WeightsError(
            f"sha256 mismatch for {entry.name} ({entry.hf_hub_id}/{entry.filename}, file {path}): "
            f"the registry expects {entry.sha256}, the file has {digest}"
        )
    return path


def _not_published(variant: str, tag: Optional[str]) -> WeightsNotPublishedError:
    preset = preset_for_model(variant)
    recipe = f"--preset {preset}" if preset else f"--model {variant}"
    what = f"{variant}.{tag}" if tag else variant
    return WeightsNotPublishedError(
        f"{what} has no published weights yet (registry: {registry_path()}). Train your own and load them:\n"
        f"  videomac pretrain {recipe} --data /path/to/videos --output-dir runs/{variant}\n"
        f"  timm.create_model('{variant}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='runs/{variant}/encoder.safetensors'))"
    )


def resolve_pretrained(variant: str, pretrained: bool, kwargs: Dict) -> Dict:
    """Called by the model entry points: a user's file is checked (dtype, finite, keys, shapes) before
    timm loads it; the authors' release is downloaded and converted, Hub entries fetched and verified,
    then timm loads the file; ``hf-hub:``/``local-dir:`` and foreign URLs are left to timm; no weights
    at all is an error, never a silent random init."""
    if not pretrained:
        return kwargs
    from timm.models import resolve_pretrained_cfg

    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay)
    if cfg.file and cfg.source != "local-dir":
        if not os.path.isfile(cfg.file):
            raise FileNotFoundError(
                f"pretrained_cfg_overlay file {cfg.file!r} does not exist; pass the encoder.safetensors a run wrote "
                f"(videomac pretrain --model {variant} --output-dir runs/X writes runs/X/encoder.safetensors)"
            )
        read_state_dict(cfg.file, expected_state(variant), f"weights file {cfg.file}", _is_head)
        is_st = file_format(cfg.file) == "safetensors"
        if is_st != cfg.file.endswith(".safetensors"):  # timm reads the file again, choosing its reader by the name
            kind, name = ("a safetensors", "*.safetensors") if is_st else ("a torch", "*.pth")
            raise WeightsError(f"weights file {cfg.file} is {kind} file: name it {name} for timm to read it")
        return kwargs
    if cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir"):
        return kwargs
    entry = find_entry(variant, tag=cfg.tag)
    if entry is not None and entry.authors:
        url = overlay.pop("url", None) or authors_url(entry)
        overlay["file"] = authors_weights(entry, variant, url)
        return dict(kwargs, pretrained_cfg_overlay=overlay)
    if cfg.url:
        return kwargs
    if entry is None or not entry.published:
        raise _not_published(variant, cfg.tag)
    overlay["file"] = fetch_weights(entry)
    return dict(kwargs, pretrained_cfg_overlay=overlay)
