"""The VideoMAC ResNets: a ResNet made for sparse masked pretraining.

Differences from torchvision's ResNet (as in the authors' code): a 4x4 stride-4 patchify stem with
LayerNorm instead of the 7x7 conv + max-pool, LayerNorm (channels-first) instead of BatchNorm and
GELU instead of ReLU everywhere. Stages keep ResNet's widths and depths; the total stride is 32, or
``output_stride`` 16 / 8 with the last stages dilated instead of strided (as timm's ResNet).

The authors' checkpoints (their ``models/resnetv2_sparse.py``; :func:`checkpoint_filter_fn`) use these
names already (``stem.{0,1}``, ``layer{i}.{j}.conv{k}`` / ``norm{k}`` / ``downsample.{0,1}``), with
MinkowskiEngine's ``.kernel`` / ``.ln.`` / ``.linear.``; torchvision's (``conv1``/``bn1`` for the stem,
``bn*``/``ln*`` for norms) are accepted too. Any key that fits neither is reported, never guessed.
"""

# No `from __future__ import annotations`: torch.fx copies forward()'s annotations into the code it
# generates, and TorchScript cannot resolve them as strings (scripting a traced model fails).
import re
from typing import Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, create_classifier
from timm.models import build_model_with_cfg, register_model

from videomac.models._cfgs import make_default_cfgs
from videomac.models.timm_blocks import checkpoint_seq, feature_take_indices
from videomac.pretrained import map_checkpoint, official_state_dict, register_checkpoint_filter, resolve_pretrained
from videomac.sparse.blocks import BlockParts, layer_list, register_block, register_sparse_container

__all__ = ["VideoMACResNet", "BasicBlock", "Bottleneck", "checkpoint_filter_fn"]

default_cfgs = make_default_cfgs(
    ["videomac_rn18", "videomac_rn34", "videomac_rn50", "videomac_rn101"],
    first_conv="stem.0",
    classifier="fc",
)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        drop_path: float = 0.0,
        dilation: int = 1,
        first_dilation: Optional[int] = None,
    ):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.norm1 = LayerNorm2d(planes)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = LayerNorm2d(planes)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = downsample
        self.act2 = nn.GELU()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.norm2(self.conv2(x))
        return self.act2(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        drop_path: float = 0.0,
        dilation: int = 1,
        first_dilation: Optional[int] = None,
    ):
        super().__init__()
        first_dilation = first_dilation or dilation
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.norm1 = LayerNorm2d(planes)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.norm2 = LayerNorm2d(planes)
        self.act2 = nn.GELU()
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.norm3 = LayerNorm2d(outplanes)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = downsample
        self.act3 = nn.GELU()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return self.act3(self.drop_path(x) + shortcut)


class VideoMACResNet(nn.Module):
    """ResNet with a patchify stem, LayerNorm and GELU (timm model interface).

    ``feature_info`` / ``forward_intermediates`` indices 0..3 are ``layer1`` .. ``layer4`` (strides 4..32;
    the stem's output is ``layer1``'s stride, so it is not a feature of its own). ``global_pool=''`` keeps
    the unpooled (B, C, H, W) map. ``output_stride`` 16 or 8 (timm's argument, what DeepLab asks for):
    the stages past that stride keep it and dilate their 3x3 convs instead (timm's ``make_blocks``), with
    the same parameters, so any checkpoint loads.
    """

    _LAYERS = ("layer1", "layer2", "layer3", "layer4")
    authors_init = "resnet"  # the authors' init rule for pretraining (videomac.pretrain.init)
    eval_stage = ("layer4", 8)  # frozen features for label propagation: the last stage at stride 8

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        output_stride: int = 32,
        global_pool: str = "avg",
        stem_width: int = 64,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 4, stride=4), LayerNorm2d(stem_width))
        self.feature_info = []
        n = sum(layers)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        inplanes, reduction, idx = stem_width, 4, 0
        dilation = prev_dilation = 1
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            if reduction >= output_stride:  # timm's make_blocks: dilate instead of striding
                dilation, stride = dilation * stride, 1
            reduction *= stride
            outplanes = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != outplanes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), LayerNorm2d(outplanes)
                )
            blocks = []
            for d in range(depth):
                first = d == 0
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        stride if first else 1,
                        downsample if first else None,
                        dpr[idx],
                        dilation=dilation,
                        first_dilation=prev_dilation,
                    )
                )
                inplanes, idx, prev_dilation = outplanes, idx + 1, dilation
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=reduction, module=f"layer{i + 1}"))
        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """New classifier for ``num_classes`` (0: none) after ``global_pool`` ('': none, (B, C, H, W) out)."""
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's forward_intermediates: ``layer{i+1}`` outputs for ``indices`` (last n if int, all if None).

        ``norm`` has nothing to apply (there is no final norm); ``stop_early`` skips the layers after the
        last index taken.
        """
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        num_layers = 4  # len(self._LAYERS), a literal: TorchScript reads no class attributes
        take_indices, max_index = feature_take_indices(num_layers, indices)
        x = self.stem(x)
        last = max_index if stop_early else num_layers - 1
        for feat_idx in range(last + 1):
            x = self._layer(feat_idx, x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``layer{i+1}(x)``, spelled out: TorchScript cannot look a module up by a computed name."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(getattr(self, self._LAYERS[i]), x)
        if i == 0:
            return self.layer1(x)
        if i == 1:
            return self.layer2(x)
        if i == 2:
            return self.layer3(x)
        return self.layer4(x)

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the layers after the last of ``indices`` (and the head, which no longer fits); returns them."""
        take_indices, max_index = feature_take_indices(len(self._LAYERS), indices)
        for name in self._LAYERS[max_index + 1 :]:
            setattr(self, name, nn.Sequential())  # empty, not Identity: checkpoint_seq iterates it
        prune_end = max_index < len(self._LAYERS) - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_sparse_container(VideoMACResNet)
register_block(
    BasicBlock,
    lambda b: BlockParts(
        [b.conv1, b.norm1, b.act1, b.conv2, b.norm2], None, b.drop_path, layer_list(b.downsample), [b.act2]
    ),
)
register_block(
    Bottleneck,
    lambda b: BlockParts(
        [b.conv1, b.norm1, b.act1, b.conv2, b.norm2, b.act2, b.conv3, b.norm3],
        None,
        b.drop_path,
        layer_list(b.downsample),
        [b.act3],
    ),
)


def _authors_key(key: str) -> str:
    key = re.sub(r"\.kernel$", ".weight", key).replace(".ln.", ".").replace(".linear.", ".")
    key = re.sub(r"^conv1\.", "stem.0.", key)
    key = re.sub(r"^(bn1|ln1|norm1|norm)\.", "stem.1.", key)
    return re.sub(r"\.(bn|ln)(\d)\.", r".norm\2.", key)


def checkpoint_filter_fn(state_dict: Dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """An authors' ResNet checkpoint (their pretraining checkpoint or a bare encoder state_dict) as
    ``model``'s dense state_dict."""
    return map_checkpoint(official_state_dict(state_dict), model, _authors_key)


register_checkpoint_filter(VideoMACResNet, checkpoint_filter_fn)


def create_videomac_resnet(variant: str, pretrained: bool = False, **kwargs) -> VideoMACResNet:
    kwargs = resolve_pretrained(variant, pretrained, kwargs)
    return build_model_with_cfg(
        VideoMACResNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


@register_model
def videomac_rn18(pretrained: bool = False, **kwargs) -> VideoMACResNet:
    """VideoMAC ResNet-18 (basic blocks 2-2-2-2)."""
    return create_videomac_resnet(
        "videomac_rn18", pretrained, **dict(dict(block=BasicBlock, layers=[2, 2, 2, 2]), **kwargs)
    )


@register_model
def videomac_rn34(pretrained: bool = False, **kwargs) -> VideoMACResNet:
    """VideoMAC ResNet-34 (basic blocks 3-4-6-3)."""
    return create_videomac_resnet(
        "videomac_rn34", pretrained, **dict(dict(block=BasicBlock, layers=[3, 4, 6, 3]), **kwargs)
    )


@register_model
def videomac_rn50(pretrained: bool = False, **kwargs) -> VideoMACResNet:
    """VideoMAC ResNet-50 (bottlenecks 3-4-6-3), 2048 output channels."""
    return create_videomac_resnet(
        "videomac_rn50", pretrained, **dict(dict(block=Bottleneck, layers=[3, 4, 6, 3]), **kwargs)
    )


@register_model
def videomac_rn101(pretrained: bool = False, **kwargs) -> VideoMACResNet:
    """VideoMAC ResNet-101 (bottlenecks 3-4-23-3)."""
    return create_videomac_resnet(
        "videomac_rn101", pretrained, **dict(dict(block=Bottleneck, layers=[3, 4, 23, 3]), **kwargs)
    )
