"""Import checkpoints written by the authors' MinkowskiEngine code into videomac's dense timm encoders,
without MinkowskiEngine.

The authors' pretraining checkpoint (``checkpoint-{epoch}.pth`` of their ``save_model_distill``) is a dict
with ``model_online`` / ``model_target`` / ``online_without_ddp`` / ``target_without_ddp`` /
``optimizer`` / ``epoch`` / ``scaler`` / ``args``. The encoder is taken from ``online_without_ddp`` (what
their own converter exports), else from ``model_online`` (``module.`` prefixes stripped), else the file
is taken as a bare state_dict. Keys under ``encoder.`` are the encoder; ``mask_token``, ``proj.*``,
``decoder.*`` and ``pred.*`` are the pretraining decoder and are dropped. Every other key must map onto
the model and every parameter of the model must be filled, else the conversion fails listing them.
The one exception is ConvNeXt's pooled ``head.norm`` (used only by ``forward_head``), which the authors'
encoder does not have: it keeps its initial value and is recorded as ``filled_from_init`` in the
output's metadata.

Layouts (DESIGN.md §2): MinkowskiEngine conv kernels ``(k*k, C_in, C_out)`` (``(C_in, C_out)`` for a
1x1 stride-1 conv), depthwise kernels ``(k*k, C)``, biases and GRN ``gamma``/``beta`` ``(1, C)``,
``MinkowskiLayerNorm`` affine under ``.ln.``, ``MinkowskiLinear`` under ``.linear.``. The dense weight of
a kernel is ``kernel.permute(2, 1, 0).reshape(C_out, C_in, k, k).transpose(-1, -2)``.

ConvNeXt names (``VideoMACConvNeXt``: timm's ConvNeXt + ``norm0..3``)::

    downsample_layers.0.{0,1}.*              -> stem.{0,1}.*            dense conv, channels-first LN
    downsample_layers.{i}.0.ln.*             -> stages.{i}.downsample.0.*
    downsample_layers.{i}.1.kernel / .bias   -> stages.{i}.downsample.1.weight / .bias
    stages.{i}.{j}.dwconv.kernel / .bias     -> stages.{i}.blocks.{j}.conv_dw.weight / .bias
    stages.{i}.{j}.norm.ln.*                 -> stages.{i}.blocks.{j}.norm.*
    stages.{i}.{j}.pwconv{1,2}.linear.*      -> stages.{i}.blocks.{j}.mlp.fc{1,2}.*
    stages.{i}.{j}.grn.gamma / .beta         -> stages.{i}.blocks.{j}.mlp.grn.weight / .bias
    norm{i}.ln.*                             -> norm{i}.*

Isotropic ConvNeXt-V2 (``VideoMACConvNeXtIsotropic``): ``stem.*`` -> ``stem.*``, ``blocks.{j}.*`` as the
block keys above, ``norm.ln.*`` -> ``norm.*``. The authors' own dense export (``.weight`` instead of
``.kernel``, no ``.ln``/``.linear``) is accepted too. Plain timm ``convnextv2_*``/``convnext_*`` targets
take ConvNeXt-V2 FCMAE encoders (no stage norms).

ResNet checkpoints are expected in videomac's names (``stem.0``, ``layer1.0.conv1``, ``norm1``...) or
torchvision's (``conv1``/``bn1`` for the stem, ``bn*``/``ln*`` for norms): the authors' ResNet release
was not available to check, so any key that fits neither is reported, never guessed.

Files are read with ``torch.load(weights_only=True)``, allowing exactly one non-tensor type,
``argparse.Namespace`` (the ``args`` their checkpoints hold). Anything else is refused naming the
type, unless the caller trusts the file (``trust_pickle=True``, ``--trust-pickle``): unpickling can
run arbitrary code.
"""

from __future__ import annotations

import argparse
import pickle
import re
from typing import Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models.convnext import ConvNeXt

from videomac.models.videomac_convnext import VideoMACConvNeXt
from videomac.models.videomac_convnext_iso import VideoMACConvNeXtIsotropic

__all__ = [
    "UntrustedCheckpointError",
    "load_checkpoint",
    "official_state_dict",
    "convert_official",
    "convert_official_file",
    "kernel_to_dense",
]

_DROP = ("mask_token", "proj", "decoder", "pred")  # the pretraining decoder side of their VideoMAC
SAFE_GLOBALS = [argparse.Namespace]  # their checkpoints' ``args``


class UntrustedCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses (it holds other Python objects)."""


def load_checkpoint(path: str, trust_pickle: bool = False):
    """``torch.load`` a checkpoint safely: ``weights_only=True`` with ``argparse.Namespace`` allowed.

    A file holding any other Python object is refused with :class:`UntrustedCheckpointError` naming it;
    ``trust_pickle=True`` loads it with ``weights_only=False`` (only for files you trust: unpickling
    can run arbitrary code).
    """
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.findall(r"GLOBAL ([\w.]+)", text)
        what = f"the Python object {found[0]!r}" if found else "a Python object that is not a tensor"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[-1] if lines else type(e).__name__)
        raise UntrustedCheckpointError(
            f"{path} holds {what}, which torch.load(weights_only=True) refuses (only tensors and "
            f"argparse.Namespace are allowed). If you trust this file, pass --trust-pickle "
            f"(trust_pickle=True) to load it with weights_only=False: unpickling can run arbitrary code.\n"
            f"torch: {reason}"
        ) from None


def kernel_to_dense(kernel: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """A MinkowskiEngine kernel as the dense conv weight of ``target_shape`` (C_out, C_in/groups, k, k)."""
    c_out, c_in, kh, kw = target_shape
    if kh != kw:
        raise ValueError(f"only square kernels are supported, target {tuple(target_shape)}")
    k = kh
    if kernel.ndim == 3:  # (k*k, C_in, C_out)
        if kernel.shape != (k * k, c_in, c_out):
            raise ValueError(f"kernel {tuple(kernel.shape)} does not fit a conv of weight {tuple(target_shape)}")
        return kernel.permute(2, 1, 0).reshape(c_out, c_in, k, k).transpose(-1, -2).contiguous()
    if kernel.ndim == 2 and c_in == 1 and kernel.shape == (k * k, c_out):  # depthwise (k*k, C)
        return kernel.permute(1, 0).reshape(c_out, 1, k, k).transpose(-1, -2).contiguous()
    if kernel.ndim == 2 and k == 1 and kernel.shape == (c_in, c_out):  # 1x1 conv stored without the volume
        return kernel.t().reshape(c_out, c_in, 1, 1).contiguous()
    raise ValueError(f"kernel {tuple(kernel.shape)} does not fit a conv of weight {tuple(target_shape)}")


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
    raise ValueError(
        f"no state_dict found (expected 'online_without_ddp', 'model_online' or a dict of tensors; got {keys})"
    )


def official_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The encoder state_dict inside a checkpoint of the authors' code, with ``module.``/``encoder.``
    prefixes removed and the decoder side (``mask_token``, ``proj``, ``decoder``, ``pred``) dropped."""
    sd, _ = _select(obj)
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(module\.)+", "", k)
        if k.split(".")[0] in _DROP:
            continue
        out[re.sub(r"^encoder\.", "", k)] = v
    return out


# ---------------------------------------------------------------------------------------------
# ConvNeXt: explicit name map (their sparse names, or the dense ones of their own converter)

_BLOCK = [  # one ConvNeXt block, after its prefix
    (r"dwconv\.(?:kernel|weight)", "conv_dw.weight"),
    (r"dwconv\.bias", "conv_dw.bias"),
    (r"norm\.(?:ln\.)?(weight|bias)", r"norm.\1"),
    (r"pwconv([12])\.(?:linear\.)?(weight|bias)", r"mlp.fc\1.\2"),
    (r"grn\.gamma", "mlp.grn.weight"),
    (r"grn\.beta", "mlp.grn.bias"),
]
_HIERARCHICAL = [
    (r"downsample_layers\.0\.0\.(weight|bias)", r"stem.0.\1"),
    (r"downsample_layers\.0\.1\.(?:ln\.)?(weight|bias)", r"stem.1.\1"),
    (r"downsample_layers\.(\d+)\.0\.(?:ln\.)?(weight|bias)", r"stages.\1.downsample.0.\2"),
    (r"downsample_layers\.(\d+)\.1\.(?:kernel|weight)", r"stages.\1.downsample.1.weight"),
    (r"downsample_layers\.(\d+)\.1\.bias", r"stages.\1.downsample.1.bias"),
    (r"norm(\d+)\.(?:ln\.)?(weight|bias)", r"norm\1.\2"),
]
_ISOTROPIC = [
    (r"stem\.(weight|bias)", r"stem.\1"),
    (r"norm\.(?:ln\.)?(weight|bias)", r"norm.\1"),
]
_BLOCK_PREFIX = {"hierarchical": r"stages\.(\d+)\.(\d+)\.", "isotropic": r"blocks\.(\d+)\."}


def _sub(key: str, table) -> Optional[str]:
    for pattern, repl in table:
        if re.fullmatch(pattern, key):
            return re.sub(f"^{pattern}$", repl, key)
    return None


def _convnext_name(key: str, layout: str) -> Optional[str]:
    """Our name for an authors' ConvNeXt key (``layout``: hierarchical or isotropic), None if unknown."""
    m = re.match(_BLOCK_PREFIX[layout], key)
    if m:
        prefix = f"stages.{m.group(1)}.blocks.{m.group(2)}." if layout == "hierarchical" else f"blocks.{m.group(1)}."
        rest = _sub(key[m.end() :], _BLOCK)
        return None if rest is None else prefix + rest
    return _sub(key, _HIERARCHICAL if layout == "hierarchical" else _ISOTROPIC)


def _fit(key: str, v: torch.Tensor, shape: torch.Size, from_kernel: bool) -> torch.Tensor:
    """The checkpoint tensor ``v`` in the target ``shape``: kernels permuted, singleton dims reshaped."""
    if from_kernel:
        return kernel_to_dense(v, shape)
    if v.shape == shape:
        return v
    squeeze = [d for d in v.shape if d != 1]
    if squeeze == [d for d in shape if d != 1]:
        return v.reshape(shape)  # (1, C) biases and GRN parameters, Linear (out, in) -> 1x1 conv (out, in, 1, 1)
    raise ValueError(f"{key}: checkpoint shape {tuple(v.shape)} does not fit {tuple(shape)}")


def _resnet_names(k: str) -> str:
    k = re.sub(r"^conv1\.", "stem.0.", k)
    k = re.sub(r"^(bn1|ln1|norm1|norm)\.", "stem.1.", k)
    return re.sub(r"\.(bn|ln)(\d)\.", r".norm\2.", k)


def _hint(model: nn.Module, unknown: List[str], missing: List[str]) -> str:
    if isinstance(model, VideoMACConvNeXt) and missing and all(re.match(r"norm\d+\.", k) for k in missing):
        return (
            " (the checkpoint has no stage norms norm0..3: a ConvNeXt-V2 FCMAE encoder, not VideoMAC's; "
            "convert it into timm's convnextv2_* instead)"
        )
    if not isinstance(model, VideoMACConvNeXt) and unknown and all(re.match(r"norm\d+\.", k) for k in unknown):
        return " (a VideoMAC encoder has stage norms norm0..3: convert it into a videomac_cnx* model)"
    return ""


def convert_official(obj, model_name: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert to the dense state_dict of ``timm.create_model(model_name, num_classes=0)``; returns it and the keys
    filled from the model's initialisation (only a ConvNeXt's pooled ``head.norm``, which the authors'
    encoders do not have). Any other unknown or missing key is an error listing them."""
    model = timm.create_model(model_name, num_classes=0)
    target = model.state_dict()
    sd = official_state_dict(obj)
    if isinstance(model, VideoMACConvNeXtIsotropic):
        layout = "isotropic"
    elif isinstance(model, ConvNeXt):
        layout = "hierarchical"
    else:
        layout = None
    out, unknown = {}, []
    for k, v in sd.items():
        if layout is not None:
            name = _convnext_name(k, layout)
        else:
            name = _resnet_names(re.sub(r"\.kernel$", ".weight", k).replace(".ln.", ".").replace(".linear.", "."))
        if name is None or name not in target:
            unknown.append(k)
            continue
        shape = target[name].shape
        out[name] = _fit(k, v, shape, from_kernel=k.endswith(".kernel")).to(target[name].dtype)
    missing = [k for k in target if k not in out]
    filled = [k for k in missing if k.startswith("head.norm.")]
    missing = [k for k in missing if k not in filled]
    if unknown or missing:
        raise ValueError(
            f"checkpoint does not match {model_name}: unknown keys {sorted(unknown)}; missing keys {sorted(missing)}"
            + _hint(model, unknown, missing)
        )
    for k in filled:
        out[k] = target[k]
    return {k: out[k] for k in target}, filled


def convert_official_file(path: str, model_name: str, out_path: str, trust_pickle: bool = False) -> str:
    """Read an authors' checkpoint (see :func:`load_checkpoint` for ``trust_pickle``), convert it for
    ``model_name`` and write a safetensors file that ``timm.create_model(model_name, pretrained=True,
    pretrained_cfg_overlay=dict(file=out_path))`` loads strictly."""
    from safetensors.torch import save_file

    obj = load_checkpoint(path, trust_pickle=trust_pickle)
    _, source = _select(obj)
    sd, filled = convert_official(obj, model_name)
    timm.create_model(model_name, num_classes=0).load_state_dict(sd, strict=True)
    meta = {"architecture": model_name, "format": "pt", "source": source, "filled_from_init": ",".join(filled)}
    save_file({k: v.contiguous() for k, v in sd.items()}, out_path, metadata=meta)
    return out_path
