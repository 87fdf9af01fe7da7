"""The isotropic ConvNeXt-V2 of the paper's Table 2 (the authors' ``SparseConvNeXtV2_Isotropic``).

A 16x16 stride-16 patchify conv with bias (no LayerNorm after it), ``depth`` ConvNeXt-V2 blocks at one
width and one resolution (7x7 depthwise, LayerNorm, 4x MLP with GELU and GRN, no layer scale), and a
final channels-first LayerNorm ``norm`` (eps 1e-6): a (B, dim, H/16, W/16) map, 14x14 at 224. The
masking patch is 16, the model's only stride. ``videomac_cnxv2_iso_s`` (dim 384, 18 blocks) has
21,979,008 parameters, the paper's 22M; ``videomac_cnxv2_iso_b`` is dim 768.

The authors' checkpoints (:func:`checkpoint_filter_fn`): ``stem.*`` -> ``stem.*``, ``blocks.{j}.*`` as
a ConvNeXt block (:mod:`videomac.models.videomac_convnext`), ``norm.ln.*`` -> ``norm.*``.
"""

# No `from __future__ import annotations`: torch.fx copies forward()'s annotations into the code it
# generates, and TorchScript cannot resolve them as strings (scripting a traced model fails).
import re
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, LayerNorm2d
from timm.models import build_model_with_cfg, register_model

from videomac.models._cfgs import make_default_cfgs
from videomac.models.timm_blocks import (
    ConvNeXtBlock,
    checkpoint_seq,
    convnext_init_weights,
    feature_take_indices,
    named_apply,
)
from videomac.models.videomac_convnext import block_key, check_version, rename
from videomac.pretrained import map_checkpoint, official_state_dict, register_checkpoint_filter, resolve_pretrained
from videomac.sparse.blocks import register_sparse_container

__all__ = ["VideoMACConvNeXtIsotropic", "ISO_ARCHS", "checkpoint_filter_fn"]

ISO_ARCHS = {
    "videomac_cnxv2_iso_s": dict(depth=18, dim=384),
    "videomac_cnxv2_iso_b": dict(depth=18, dim=768),
}


class VideoMACConvNeXtIsotropic(nn.Module):
    """Isotropic ConvNeXt-V2: ``stem`` (conv k=s=patch_size, bias) -> ``blocks`` -> ``norm``; timm conventions.

    ``head`` pools (``global_pool``) and applies an optional linear classifier (``num_classes``; 0 =
    headless, the default of the registered models). ``feature_info`` lists every block (reduction =
    ``patch_size``); ``features_only=True`` returns the last 3 blocks' outputs as timm's ViTs do
    (``out_indices`` picks others; ``feature_cfg=dict(norm=True)`` applies the final ``norm`` to them).
    """

    authors_init = "convnext"  # the authors' init rule for pretraining (videomac.pretrain.init)
    # Frozen features for label propagation: the final norm at the only stride (a patchify stem of
    # stride 16 cannot be made finer).
    eval_stage = ("norm", 16)

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depth: int = 18,
        dim: int = 384,
        patch_size: int = 16,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        conv_mlp: bool = False,
        use_grn: bool = True,
        ls_init_value: Optional[float] = None,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.patch_size = patch_size
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True, **dd)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm's ViTs
        self.blocks = nn.Sequential(
            *[
                ConvNeXtBlock(
                    dim,
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    conv_mlp=conv_mlp,
                    use_grn=use_grn,
                    ls_init_value=ls_init_value,
                    drop_path=dpr[i],
                    **dd,
                )
                for i in range(depth)
            ]
        )
        self.norm = LayerNorm2d(dim, eps=norm_eps, **dd)
        self.num_features = self.head_hidden_size = dim
        self.head = ClassifierHead(dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        named_apply(convnext_init_weights, self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs (``indices``: the last n if int, all if None); ``norm`` applies the final norm to them."""
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem(x)
        # An if statement, not a conditional expression: TorchScript drops the branch that cannot script.
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a Sequential
            blocks = self.blocks
        else:
            blocks = self.blocks[: max_index + 1]
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Its forward only chains stem, blocks and the per-position norm.
register_sparse_container(VideoMACConvNeXtIsotropic)

_OUTSIDE_BLOCKS = [(r"stem\.(weight|bias)", r"stem.\1"), (r"norm\.(?:ln\.)?(weight|bias)", r"norm.\1")]


def _authors_key(key: str) -> Optional[str]:
    m = re.match(r"blocks\.(\d+)\.", key)
    return block_key(f"blocks.{m.group(1)}.", key[m.end() :]) if m else rename(key, _OUTSIDE_BLOCKS)


def checkpoint_filter_fn(state_dict: Dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """An authors' isotropic ConvNeXt checkpoint (their pretraining checkpoint or a bare encoder
    state_dict) as ``model``'s dense state_dict."""
    sd = official_state_dict(state_dict)
    check_version(model, sd)
    return map_checkpoint(sd, model, _authors_key)


register_checkpoint_filter(VideoMACConvNeXtIsotropic, checkpoint_filter_fn)

default_cfgs = make_default_cfgs(ISO_ARCHS, first_conv="stem", classifier="head.fc", reduction=16)


def _create(variant: str, pretrained: bool = False, **kwargs) -> VideoMACConvNeXtIsotropic:
    kwargs = resolve_pretrained(variant, pretrained, kwargs)
    feature_cfg = dict(out_indices=3, feature_cls="getter", **(kwargs.pop("feature_cfg", None) or {}))
    return build_model_with_cfg(
        VideoMACConvNeXtIsotropic,
        variant,
        pretrained,
        feature_cfg=feature_cfg,
        **dict(ISO_ARCHS[variant], **kwargs),
    )


@register_model
def videomac_cnxv2_iso_s(pretrained: bool = False, **kwargs) -> VideoMACConvNeXtIsotropic:
    """Isotropic ConvNeXt-V2 small (dim 384, 18 blocks, patch 16; the paper's Table 2, 22M)."""
    return _create("videomac_cnxv2_iso_s", pretrained, **kwargs)


@register_model
def videomac_cnxv2_iso_b(pretrained: bool = False, **kwargs) -> VideoMACConvNeXtIsotropic:
    """Isotropic ConvNeXt-V2 base (dim 768, 18 blocks, patch 16)."""
    return _create("videomac_cnxv2_iso_b", pretrained, **kwargs)
