"""Frozen per-frame features from one stage of an encoder, at a chosen output stride.

Default (docs/design.md §5, docs/evaluation.md): what the model declares as its ``eval_stage`` (the
videomac families: the LAST stage at output stride 8 -- ``layer4`` of a ResNet, 2048-d for RN50, the last
``stages.*`` of a ConvNeXt, 768-d for CNXv2-S -- and the isotropic ConvNeXt's final ``norm`` at its only
stride, 16); for any other timm model the last of its ``feature_info`` stages at stride 8 (its own
when finer). Any module can be chosen by name (``stage``). The stride is reduced as CRW
does for ResNets: the stride-2 convolutions of the ``feature_info`` stages up to the chosen one, last
first (the 3x3/strided conv and the 1x1 ``downsample`` conv of their first block) become stride 1. A
ConvNeXt downsampling layer is a 2x2 stride-2 "patchify" conv; it becomes a 2x2 stride-1 conv after
replicate-padding one row/column at the bottom/right, which keeps the map size and the conv's weights
and receptive field per tap. Kernel sizes and weights never change. When a stage ``stages.i`` is
followed by a norm module ``norm{i}`` on the model, the features are taken after that norm. A
``feature_info`` stage is read with the model's ``forward_intermediates`` (``stop_early``), any other
module with a forward hook; either way later stages are never run.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from videomac.pretrained import read_state_dict

__all__ = [
    "DEFAULT_STRIDE",
    "create_encoder",
    "load_weights",
    "default_stage",
    "post_norm",
    "FeatureExtractor",
]

DEFAULT_STRIDE = 8  # the paper's features: 60x107 cells for a 480x854 frame, whatever the family


def _stage_names(model: nn.Module) -> List[str]:
    """The stages the model's ``feature_info`` lists, in forward order; a stage norm ``norm{i}`` (the
    videomac ConvNeXt's feature module) stands for the stage ``stages.{i}`` it closes."""
    names = [info["module"] for info in getattr(model, "feature_info", None) or []]
    stages = isinstance(getattr(model, "stages", None), nn.Module)
    return [f"stages.{n[4:]}" if stages and re.fullmatch(r"norm\d+", n) else n for n in names]


def default_stage(model: nn.Module) -> Tuple[str, int]:
    """``(stage module name, output stride)`` used when none is given: the model's declared
    ``eval_stage``, else its last ``feature_info`` stage at stride 8 (see docs/evaluation.md)."""
    declared = getattr(model, "eval_stage", None)
    if declared:
        return declared[0], int(declared[1])
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info; pass stage=<module name>")
    return _stage_names(model)[-1], min(DEFAULT_STRIDE, int(info[-1]["reduction"]))


def post_norm(model: nn.Module, stage: str) -> Optional[str]:
    """``'norm{i}'`` when ``stage`` is ``stages.{i}`` and the model has a module ``norm{i}`` (a norm applied
    after that stage); the features are then taken after it. None otherwise."""
    m = re.fullmatch(r"stages\.(\d+)", stage)
    if m and isinstance(getattr(model, f"norm{m.group(1)}", None), nn.Module):
        return f"norm{m.group(1)}"
    return None


def create_encoder(name: str, weights: Optional[str] = None, pretrained: bool = False) -> nn.Module:
    """Create a timm model (``import videomac`` registers the VideoMAC encoders first), optionally loading
    a state dict from ``weights`` (.safetensors/.pt/.pth). Unknown names raise ``ValueError``."""
    import timm

    import videomac.models  # noqa: F401  (registers videomac_* with timm)
    from videomac.models.names import check_model_name

    check_model_name(name)
    # a tagged name (videomac_rn50.yt18_authors) means those weights unless a file is given
    model = timm.create_model(name, pretrained=pretrained or ("." in name and not weights))
    if weights:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a dense state dict strictly; only the classifier head may be missing (it is never used)."""
    own = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    heads = (head,) if isinstance(head, str) else tuple(head)
    sd = read_state_dict(path, own, f"weights {path}", lambda k: any(k == h or k.startswith(h + ".") for h in heads))
    missing = [k for k in own if k not in sd]
    model.load_state_dict({**{k: own[k] for k in missing}, **sd}, strict=True)
    return model


class _StopForward(Exception):
    pass


class _PadPatchify(nn.Module):
    """A k=2 stride-2 conv turned stride 1 with one replicate-padded row/column (bottom/right)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        k = conv.kernel_size
        self.pad = (0, k[1] - 1, 0, k[0] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, mode="replicate"))


def _destride(module: nn.Module) -> int:
    """Make every stride-2 op inside ``module`` stride 1; returns how many were changed."""
    changed = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and tuple(child.stride) == (2, 2):
            if tuple(child.kernel_size) == (2, 2) and child.padding in (0, (0, 0)):
                child.stride = (1, 1)
                setattr(module, name, _PadPatchify(child))
            else:
                child.stride = (1, 1)
            changed += 1
        elif isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)) and child.stride in (2, (2, 2)):
            # e.g. the avg-pool "downsample" of ResNet-D: at stride 1 it only blurs, so drop it
            setattr(module, name, nn.Identity())
            changed += 1
        else:
            changed += _destride(child)
    return changed


class FeatureExtractor(nn.Module):
    """Frozen features of ``stage`` at ``stride`` for a batch of frames.

    Defaults: the model's ``eval_stage`` (:func:`default_stage`; ``videomac_rn50``: ``layer4`` at stride 8,
    2048 channels; ``videomac_cnxv2_s``: ``stages.3``, 768 channels), taken after ``norm{i}`` when the model
    has one for that stage (:func:`post_norm`). ``stage=`` picks another module (e.g. ``layer3``).

    ``model`` is a timm model name or module. Inputs are ``uint8 (T, H, W, 3)`` arrays/tensors or float
    ``(T, 3, H, W)`` tensors in [0, 1]; they are normalized with the model's ``pretrained_cfg`` mean/std.
    Returns ``(T, C, h, w)`` float features (not L2-normalized; propagation does that).
    """

    def __init__(
        self,
        model: Union[str, nn.Module],
        stage: Optional[str] = None,
        stride: Optional[int] = None,
        weights: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if isinstance(model, str):
            self.model_name = model
            model = create_encoder(model, weights)
        else:
            self.model_name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
            if weights:
                load_weights(model, weights)
        if stage is None:
            stage, dstride = default_stage(model)
            stride = stride or dstride
        modules = dict(model.named_modules())
        if stage not in modules:
            raise ValueError(f"{type(model).__name__} has no module {stage!r}; stages: {_stage_names(model)}")
        self.model = model.eval().requires_grad_(False)
        self.stage = stage
        self.post_norm = post_norm(model, stage)
        # A feature_info stage is taken with the model's forward_intermediates (timm's API: a stage norm
        # that is the feature's own module is applied there); any other module with a forward hook.
        names = _stage_names(model)
        self._index = names.index(stage) if stage in names and hasattr(model, "forward_intermediates") else None
        if self._index is not None and model.feature_info[self._index]["module"] == self.post_norm:
            self._norm_after = None
        else:
            self._norm_after = self.post_norm
        self._hook_out: Optional[torch.Tensor] = None
        # the hook is attached only while this extractor runs (see _run): the model stays usable on its own
        self._stage_module = [modules[stage]]  # a list, so nn.Module does not register it twice
        self.natural_stride = self._measure_stride()
        if stride is not None and stride != self.natural_stride:
            self._set_stride(stride)
        self.stride = self._measure_stride()
        if stride is not None and self.stride != stride:
            raise ValueError(f"could not reach stride {stride} at {stage!r} (got {self.stride})")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dtype = dtype
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _hook(self, module, inputs, output):
        self._hook_out = output
        raise _StopForward

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self._intermediate(x) if self._index is not None else self._hooked(x)
        if self._norm_after is not None:  # applied here whether or not the model's forward applies it
            out = getattr(self.model, self._norm_after)(out)
        return out

    def _intermediate(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=[self._index], stop_early=True, intermediates_only=True)[0]

    def _hooked(self, x: torch.Tensor) -> torch.Tensor:
        fwd = getattr(self.model, "forward_features", self.model)
        handle = self._stage_module[0].register_forward_hook(self._hook)
        try:
            fwd(x)
        except _StopForward:
            out, self._hook_out = self._hook_out, None
            return out
        finally:
            handle.remove()
        raise RuntimeError(f"stage {self.stage!r} was not reached by the forward pass")

    @torch.no_grad()
    def _measure_stride(self) -> int:
        size = 256
        p = next(self.model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu")
        return int(round(size / self._run(x).shape[-1]))

    def _set_stride(self, stride: int) -> None:
        names = _stage_names(self.model)
        if self.stage not in names:
            raise ValueError(f"changing the stride needs a stage among {names}, got {self.stage!r}")
        if stride > self.natural_stride or self.natural_stride % stride:
            raise ValueError(f"stride {stride} cannot be reached from the natural {self.natural_stride}")
        modules = dict(self.model.named_modules())
        factor = self.natural_stride // stride
        for name in reversed(names[: names.index(self.stage) + 1]):
            if factor == 1:
                break
            if _destride(modules[name]):
                factor //= 2
        if factor != 1:
            raise ValueError(f"stride {stride} cannot be reached at {self.stage!r}")

    def preprocess(self, frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 255.0
        x = x.to(self.device, torch.float32)
        return (x - self.mean) / self.std  # float32: autocast runs the model in self.dtype

    @torch.no_grad()
    def forward(self, frames: Union[np.ndarray, torch.Tensor], batch_size: int = 8) -> torch.Tensor:
        out = []
        for s in range(0, len(frames), batch_size):
            x = self.preprocess(frames[s : s + batch_size])
            if self.dtype in (torch.float16, torch.bfloat16):
                with torch.autocast(self.device.type, dtype=self.dtype):
                    out.append(self._run(x))
            else:
                out.append(self._run(x))
        return torch.cat(out)

    def describe(self) -> Dict[str, object]:
        out = {"model": self.model_name, "stage": self.stage, "stride": self.stride}
        if self.post_norm is not None:
            out["post_norm"] = self.post_norm
        out["natural_stride"] = self.natural_stride
        return out
