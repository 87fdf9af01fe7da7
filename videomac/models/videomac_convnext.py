"""ConvNeXt-V2 and ConvNeXt-V1 encoders as the VideoMAC authors built them.

The authors' encoder (their ``SparseConvNeXtV2`` / ``SparseConvNeXtV1``) is ConvNeXt with one addition:
a LayerNorm (channels-first, eps 1e-6) after EVERY stage, in the main path, so stage ``i``'s output is
normalised before it feeds the next downsampling layer and the encoder ends with ``norm3``. Their V1 has
no layer scale. :class:`VideoMACConvNeXt` is timm's ``ConvNeXt`` plus these norms, as modules
``norm0`` .. ``norm3`` (timm's ``norm_pre`` stays Identity, timm's ``head`` with its pooled
``head.norm`` is kept for ``forward_head`` / ``num_classes > 0``).

Each ``videomac_cnxv2_*`` / ``videomac_cnxv1_*`` has the arguments of timm's ``convnextv2_*`` /
``convnext_*`` of the same size (V1 with ``ls_init_value=None``): its state_dict minus ``norm{i}.*``
loads strictly into that timm model built with the same ``ls_init_value``.

The authors' checkpoints (:func:`checkpoint_filter_fn`; their sparse names, or the dense ones of their
own converter: ``.weight`` for ``.kernel``, no ``.ln``/``.linear``)::

    downsample_layers.0.{0,1}.*              -> stem.{0,1}.*            dense conv, channels-first LN
    downsample_layers.{i}.0.ln.*             -> stages.{i}.downsample.0.*
    downsample_layers.{i}.1.kernel / .bias   -> stages.{i}.downsample.1.weight / .bias
    stages.{i}.{j}.dwconv.kernel / .bias     -> stages.{i}.blocks.{j}.conv_dw.weight / .bias
    stages.{i}.{j}.norm.ln.*                 -> stages.{i}.blocks.{j}.norm.*
    stages.{i}.{j}.pwconv{1,2}.linear.*      -> stages.{i}.blocks.{j}.mlp.fc{1,2}.*
    stages.{i}.{j}.grn.gamma / .beta         -> stages.{i}.blocks.{j}.mlp.grn.weight / .bias
    norm{i}.ln.*                             -> norm{i}.*

The pooled ``head.norm`` (used only by ``forward_head``) is not in their encoder: it keeps its initial
value (ones, zeros) and is recorded as filled from init. The version comes from the file's keys (GRN
parameters: V2); a V1 file for a V2 model (or the reverse) is refused naming the model to use. timm's
own ``convnextv2_*``/``convnext_*`` take ConvNeXt-V2 FCMAE encoders (no stage norms) the same way.
"""

# No `from __future__ import annotations`: torch.fx copies forward()'s annotations into the code it
# generates, and TorchScript cannot resolve them as strings (scripting a traced model fails).
import re
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, register_model

from videomac.models._cfgs import make_default_cfgs
from videomac.models.timm_blocks import ConvNeXt, feature_take_indices
from videomac.pretrained import (
    WeightsError,
    architecture,
    map_checkpoint,
    official_state_dict,
    register_checkpoint_filter,
    resolve_pretrained,
)
from videomac.sparse.blocks import register_sparse_container

__all__ = ["VideoMACConvNeXt", "ARCHS", "STAGE_NORM_EPS", "checkpoint_filter_fn"]

STAGE_NORM_EPS = 1e-6  # the authors' MinkowskiLayerNorm(C, 1e-6) after every stage

_V2 = dict(use_grn=True, ls_init_value=None)
_V2C = dict(_V2, conv_mlp=True)
_V1 = dict(ls_init_value=None)  # the authors' V1 blocks accept and ignore layer_scale_init_value
# name -> (timm twin, architecture args); the small V2 sizes use conv-MLPs, as in timm.
ARCHS = {
    "videomac_cnxv2_atto": (
        "convnextv2_atto",
        dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_V2C),
    ),
    "videomac_cnxv2_femto": (
        "convnextv2_femto",
        dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), **_V2C),
    ),
    "videomac_cnxv2_pico": (
        "convnextv2_pico",
        dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), **_V2C),
    ),
    "videomac_cnxv2_nano": (
        "convnextv2_nano",
        dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), **_V2C),
    ),
    "videomac_cnxv2_t": ("convnextv2_tiny", dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_V2)),
    "videomac_cnxv2_s": ("convnextv2_small", dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_V2)),
    "videomac_cnxv2_b": ("convnextv2_base", dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_V2)),
    "videomac_cnxv2_l": ("convnextv2_large", dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **_V2)),
    "videomac_cnxv2_h": ("convnextv2_huge", dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816), **_V2)),
    "videomac_cnxv1_t": ("convnext_tiny", dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_V1)),
    "videomac_cnxv1_s": ("convnext_small", dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_V1)),
}


class VideoMACConvNeXt(ConvNeXt):
    """timm's ``ConvNeXt`` with the authors' LayerNorm after every stage (``norm0`` .. ``norm{n-1}``).

    ``forward_features`` = ``stem`` -> for each stage i: ``stages[i]`` -> ``norm{i}``. ``feature_info``,
    ``forward_intermediates`` and ``features_only=True`` give stage outputs after their norms.
    """

    authors_init = "convnext"  # the authors' init rule for pretraining (videomac.pretrain.init)

    @property
    def eval_stage(self) -> Tuple[str, int]:
        """Frozen features for label propagation: the last stage (after its norm) at stride 8."""
        return f"stages.{len(self.stages) - 1}", 8

    def __init__(self, *args, stage_norm_eps: float = STAGE_NORM_EPS, **kwargs):
        super().__init__(*args, **kwargs)
        if len(self.stages) > 4:
            raise ValueError(f"VideoMACConvNeXt has at most 4 stages (norm0..norm3), got depths of {len(self.stages)}")
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        # Re-register so the state_dict reads stem, stages, norm0..3, norm_pre, head (forward order).
        tail = {name: self._modules.pop(name) for name in ("norm_pre", "head")}
        for i, info in enumerate(self.feature_info):
            self.add_module(f"norm{i}", LayerNorm2d(info["num_chs"], eps=stage_norm_eps, **dd))
            info["module"] = f"norm{i}"
        for name, module in tail.items():
            self.add_module(name, module)

    def _stage_norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``norm{i}(x)``, spelled out: TorchScript cannot look a module up by a computed name, and a
        ModuleList would rename the ``norm{i}.*`` keys of the authors' checkpoints."""
        if i == 0:
            return self.norm0(x)
        if i == 1 and hasattr(self, "norm1"):  # hasattr: a pruned model has fewer (scripted as a constant)
            return self.norm1(x)
        if i == 2 and hasattr(self, "norm2"):
            return self.norm2(x)
        if i == 3 and hasattr(self, "norm3"):
            return self.norm3(x)
        raise RuntimeError(f"no stage norm norm{i}")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        # norm{i} closes stage i: after its blocks, before stage i+1's downsample.
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)", None), (r"^norm(\d+)", None)]
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm(\d+)\.", (99998,)),
                (r"^norm_pre", (99999,)),
            ],
        )

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's forward_intermediates; every intermediate is a stage output after its ``norm{i}``
        (the stage norms are part of the network). ``norm`` applies ``norm_pre`` (Identity) to the last."""
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        last_idx = len(self.stages) - 1
        # An if statement, not a conditional expression: TorchScript drops the branch that cannot script.
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a Sequential
            stages = self.stages
        else:
            stages = self.stages[: max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = self._stage_norm(feat_idx, stage(x))
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        for i in range(len(self.stages), len(self.feature_info)):
            if hasattr(self, f"norm{i}"):
                delattr(self, f"norm{i}")  # its stage is gone
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = self._stage_norm(i, stage(x))
        return self.norm_pre(x)


# Its forward composes stem, stages and the per-position stage norms: position-wise glue only.
register_sparse_container(VideoMACConvNeXt)


# The authors' checkpoints: one ConvNeXt block after its prefix, their sparse or dense names.
_BLOCK = [
    (r"dwconv\.(?:kernel|weight)", "conv_dw.weight"),
    (r"dwconv\.bias", "conv_dw.bias"),
    (r"norm\.(?:ln\.)?(weight|bias)", r"norm.\1"),
    (r"pwconv([12])\.(?:linear\.)?(weight|bias)", r"mlp.fc\1.\2"),
    (r"grn\.gamma", "mlp.grn.weight"),
    (r"grn\.beta", "mlp.grn.bias"),
]
_OUTSIDE_BLOCKS = [
    (r"downsample_layers\.0\.0\.(weight|bias)", r"stem.0.\1"),
    (r"downsample_layers\.0\.1\.(?:ln\.)?(weight|bias)", r"stem.1.\1"),
    (r"downsample_layers\.(\d+)\.0\.(?:ln\.)?(weight|bias)", r"stages.\1.downsample.0.\2"),
    (r"downsample_layers\.(\d+)\.1\.(?:kernel|weight)", r"stages.\1.downsample.1.weight"),
    (r"downsample_layers\.(\d+)\.1\.bias", r"stages.\1.downsample.1.bias"),
    (r"norm(\d+)\.(?:ln\.)?(weight|bias)", r"norm\1.\2"),
]


def rename(key: str, table) -> Optional[str]:
    """``key`` renamed by the first ``(pattern, replacement)`` of ``table`` that matches it whole."""
    for pattern, repl in table:
        if re.fullmatch(pattern, key):
            return re.sub(f"^{pattern}$", repl, key)
    return None


def block_key(prefix: str, rest: str) -> Optional[str]:
    """Our name for the key ``rest`` of an authors' ConvNeXt block, under our ``prefix``."""
    name = rename(rest, _BLOCK)
    return None if name is None else prefix + name


def _authors_key(key: str) -> Optional[str]:
    m = re.match(r"stages\.(\d+)\.(\d+)\.", key)
    if m:
        return block_key(f"stages.{m.group(1)}.blocks.{m.group(2)}.", key[m.end() :])
    return rename(key, _OUTSIDE_BLOCKS)


def check_version(model: nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """ConvNeXt V1 or V2 from the file's own keys (GRN parameters = V2); refuse a mismatch naming the model."""
    import timm

    has_grn = any(".grn." in k for k in sd)
    wants_grn = any(".grn." in k for k in model.state_dict())
    if has_grn == wants_grn:
        return
    found, want = ("V2", "V1") if has_grn else ("V1", "V2")
    name = architecture(model)
    other = name.replace("cnxv2", "cnxv1") if wants_grn else name.replace("cnxv1", "cnxv2")
    use = f"use --model {other}" if other != name and timm.is_model(other) else "use the matching model"
    raise WeightsError(
        f"the checkpoint holds a ConvNeXt-{found} encoder ({'GRN parameters found' if has_grn else 'no GRN parameters'}"
        f"), but {name} is ConvNeXt-{want}: {use}"
    )


def head_norm_init(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The pooled head's LayerNorm at its initial affine (ones, zeros): the authors' encoders have none."""
    target = model.state_dict()
    return {
        k: (torch.ones if k.endswith(".weight") else torch.zeros)(target[k].shape, dtype=target[k].dtype)
        for k in ("head.norm.weight", "head.norm.bias")
        if k in target
    }


def _stage_norms_hint(model: nn.Module):
    stage_norms = "norm0.weight" in model.state_dict()

    def hint(unknown: List[str], missing: List[str]) -> str:
        if stage_norms and missing and all(re.match(r"norm\d+\.", k) for k in missing):
            return (
                " (the checkpoint has no stage norms norm0..3: a ConvNeXt-V2 FCMAE encoder, not VideoMAC's; "
                "convert it into timm's convnextv2_* instead)"
            )
        if not stage_norms and unknown and all(re.match(r"norm\d+\.", k) for k in unknown):
            return " (a VideoMAC encoder has stage norms norm0..3: convert it into a videomac_cnx* model)"
        return ""

    return hint


def checkpoint_filter_fn(state_dict: Dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """An authors' ConvNeXt checkpoint (their pretraining checkpoint or a bare encoder state_dict) as
    ``model``'s dense state_dict (a :class:`VideoMACConvNeXt`, or timm's ``ConvNeXt`` for FCMAE encoders)."""
    sd = official_state_dict(state_dict)
    check_version(model, sd)
    return map_checkpoint(sd, model, _authors_key, _stage_norms_hint(model), head_norm_init(model))


register_checkpoint_filter(VideoMACConvNeXt, checkpoint_filter_fn)
register_checkpoint_filter(ConvNeXt, checkpoint_filter_fn)  # timm's convnextv2_*: FCMAE encoders

default_cfgs = make_default_cfgs(ARCHS, first_conv="stem.0", classifier="head.fc")


def _create(variant: str, pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    kwargs = resolve_pretrained(variant, pretrained, kwargs)
    return build_model_with_cfg(
        VideoMACConvNeXt,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(ARCHS[variant][1], **kwargs),
    )


@register_model
def videomac_cnxv2_atto(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 atto (timm's ``convnextv2_atto``, conv-MLP) + the authors' stage norms."""
    return _create("videomac_cnxv2_atto", pretrained, **kwargs)


@register_model
def videomac_cnxv2_femto(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 femto (timm's ``convnextv2_femto``, conv-MLP) + the authors' stage norms."""
    return _create("videomac_cnxv2_femto", pretrained, **kwargs)


@register_model
def videomac_cnxv2_pico(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 pico (timm's ``convnextv2_pico``, conv-MLP) + the authors' stage norms."""
    return _create("videomac_cnxv2_pico", pretrained, **kwargs)


@register_model
def videomac_cnxv2_nano(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 nano (timm's ``convnextv2_nano``, conv-MLP) + the authors' stage norms."""
    return _create("videomac_cnxv2_nano", pretrained, **kwargs)


@register_model
def videomac_cnxv2_t(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 tiny (timm's ``convnextv2_tiny``) + the authors' stage norms."""
    return _create("videomac_cnxv2_t", pretrained, **kwargs)


@register_model
def videomac_cnxv2_s(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 small (timm's ``convnextv2_small``) + the authors' stage norms."""
    return _create("videomac_cnxv2_s", pretrained, **kwargs)


@register_model
def videomac_cnxv2_b(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 base (timm's ``convnextv2_base``) + the authors' stage norms."""
    return _create("videomac_cnxv2_b", pretrained, **kwargs)


@register_model
def videomac_cnxv2_l(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 large (timm's ``convnextv2_large``) + the authors' stage norms."""
    return _create("videomac_cnxv2_l", pretrained, **kwargs)


@register_model
def videomac_cnxv2_h(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V2 huge (timm's ``convnextv2_huge``) + the authors' stage norms."""
    return _create("videomac_cnxv2_h", pretrained, **kwargs)


@register_model
def videomac_cnxv1_t(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V1 tiny (timm's ``convnext_tiny``, no layer scale) + the authors' stage norms."""
    return _create("videomac_cnxv1_t", pretrained, **kwargs)


@register_model
def videomac_cnxv1_s(pretrained: bool = False, **kwargs) -> VideoMACConvNeXt:
    """ConvNeXt-V1 small (timm's ``convnext_small``, no layer scale) + the authors' stage norms."""
    return _create("videomac_cnxv1_s", pretrained, **kwargs)
