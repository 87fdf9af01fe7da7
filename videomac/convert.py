"""Import checkpoints written by the authors' MinkowskiEngine code (and ConvNeXt-V2 FCMAE ones) into
videomac's dense timm encoders, without MinkowskiEngine.

Sparse layouts handled (DESIGN.md §2): conv kernels ``(k*k, C_in, C_out)`` (``(C_in, C_out)`` for 1x1),
depthwise kernels ``(k*k, C)``, biases ``(1, C)``, ``MinkowskiLayerNorm`` affine under ``.ln.``,
``MinkowskiLinear`` under ``.linear.``, GRN ``gamma``/``beta`` of shape ``(1, C)``. The dense weight of
a kernel is ``kernel.permute(2, 1, 0).reshape(C_out, C_in, k, k).transpose(-1, -2)``.

Key names: ConvNeXt checkpoints use the official ConvNeXt-V2 names (``downsample_layers``, ``stages``,
``dwconv``, ``pwconv1``...), mapped by timm's own ConvNeXt filter. ResNet checkpoints are expected in
videomac's names (``stem.0``, ``layer1.0.conv1``, ``norm1``...) or torchvision's (``conv1``/``bn1`` for the
stem, ``bn*``/``ln*`` for norms): the authors' ResNet release was not available to check, so any key
that fits neither is reported, never guessed.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Tuple

import timm
import torch

__all__ = ["official_state_dict", "convert_official", "convert_official_file", "kernel_to_dense"]

_DROP = ("decoder", "proj", "pred", "mask_token", "target")


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


def official_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The encoder state_dict inside a checkpoint of the authors' code (``online_without_ddp``) or FCMAE
    (``model``), with ``module.``/``encoder.`` prefixes removed and decoder/proj/pred/mask_token dropped."""
    for key in ("online_without_ddp", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError("no state_dict found (expected a dict with 'online_without_ddp', 'model' or tensors)")
    out = {}
    for k, v in obj.items():
        k = re.sub(r"^(module\.)+", "", k)
        if k.split(".")[0] in _DROP:
            continue
        out[re.sub(r"^encoder\.", "", k)] = v
    return out


def _desparsify_names(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k.replace(".ln.", ".").replace(".linear.", "."): v for k, v in sd.items()}


def _resnet_names(k: str) -> str:
    k = re.sub(r"^conv1\.", "stem.0.", k)
    k = re.sub(r"^(bn1|ln1|norm1|norm)\.", "stem.1.", k)
    return re.sub(r"\.(bn|ln)(\d)\.", r".norm\2.", k)


def _square(volume: int) -> int:
    k = math.isqrt(volume)
    if k * k != volume:
        raise ValueError(f"kernel volume {volume} is not a square kernel")
    return k


def _convnext_dense(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Sparse ConvNeXt kernels to dense weights before timm's filter (which would reshape them wrongly)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".kernel"):
            base = k[: -len(".kernel")]
            if v.ndim == 3:
                k_ = _square(v.shape[0])
                v = kernel_to_dense(v, torch.Size((v.shape[2], v.shape[1], k_, k_)))
            elif v.ndim == 2 and base.endswith("dwconv"):
                k_ = _square(v.shape[0])
                v = kernel_to_dense(v, torch.Size((v.shape[1], 1, k_, k_)))
            else:
                raise ValueError(f"{k}: cannot interpret a kernel of shape {tuple(v.shape)}")
            k = base + ".weight"
        out[k] = v
    return out


def convert_official(obj, model_name: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert to the dense state_dict of ``timm.create_model(model_name)``; returns it and the keys
    filled from the model's initialisation (only a ConvNeXt's final ``head.norm``, which FCMAE
    encoders do not have). Any other unknown or missing key is an error listing them."""
    from timm.models.convnext import checkpoint_filter_fn

    model = timm.create_model(model_name)
    target = model.state_dict()
    sd = _desparsify_names(official_state_dict(obj))
    if "stages.0.blocks.0.conv_dw.weight" in target:
        sd = checkpoint_filter_fn(_convnext_dense(sd), model)
    else:
        sd = {_resnet_names(k[: -len(".kernel")] + ".weight" if k.endswith(".kernel") else k): v for k, v in sd.items()}
    out, unknown = {}, []
    for k, v in sd.items():
        if k not in target:
            unknown.append(k)
            continue
        shape = target[k].shape
        if len(shape) == 4 and v.shape != shape:
            v = kernel_to_dense(v, shape)
        elif v.shape != shape and v.numel() == math.prod(shape):
            v = v.reshape(shape)  # biases and GRN parameters stored as (1, C)
        if v.shape != shape:
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} does not fit {tuple(shape)}")
        out[k] = v.to(target[k].dtype)
    missing = [k for k in target if k not in out]
    filled = [k for k in missing if k.startswith("head.norm.")]
    missing = [k for k in missing if k not in filled]
    if unknown or missing:
        raise ValueError(
            f"checkpoint does not match {model_name}: unknown keys {sorted(unknown)}; missing keys {sorted(missing)}"
        )
    for k in filled:
        out[k] = target[k]
    return out, filled


def convert_official_file(path: str, model_name: str, out_path: str) -> str:
    from safetensors.torch import save_file

    obj = torch.load(path, map_location="cpu", weights_only=False)
    sd, filled = convert_official(obj, model_name)
    model = timm.create_model(model_name)
    model.load_state_dict(sd, strict=True)
    meta = {"architecture": model_name, "format": "pt", "filled_from_init": ",".join(filled)}
    save_file({k: v.contiguous() for k, v in sd.items()}, out_path, metadata=meta)
    return out_path
