"""What videomac takes from timm beyond its public API, in one place, and timm's ConvNeXt and ResNet
families declared for sparse execution (:mod:`videomac.sparse.blocks`).

timm keeps ``feature_take_indices``, ``FeatureGetterNet`` and ConvNeXt's ``_init_weights`` in private
modules; everything else comes from ``timm.models`` / ``timm.layers``. CI runs the model tests on the
oldest timm that setup.py allows (.ci/run), so a move there fails a test, not a user.
"""

from __future__ import annotations

from typing import List, Optional

import torch.nn as nn
from timm.layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp
from timm.models import checkpoint_seq, named_apply
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from timm.models.convnext import _init_weights as convnext_init_weights
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from videomac.sparse.blocks import BlockParts, dense_class, layer_list, register_block, register_sparse_container

__all__ = [
    "ConvNeXt",
    "ConvNeXtBlock",
    "FeatureGetterNet",
    "checkpoint_seq",
    "convnext_init_weights",
    "feature_take_indices",
    "named_apply",
]

for _cls in (ConvNeXt, ConvNeXtStage, Mlp, ConvMlp, GlobalResponseNormMlp, ResNet):
    register_sparse_container(_cls)


def _mlp_ops(mlp: nn.Module) -> Optional[List[nn.Module]]:
    cls = dense_class(mlp)
    if cls is GlobalResponseNormMlp:
        return [mlp.fc1, mlp.act, mlp.drop1, mlp.grn, mlp.fc2, mlp.drop2]
    if cls is Mlp:
        return [mlp.fc1, mlp.act, mlp.drop1, mlp.norm, mlp.fc2, mlp.drop2]
    if cls is ConvMlp:
        return [mlp.fc1, mlp.norm, mlp.act, mlp.drop, mlp.fc2]
    return None


def _convnext_parts(b: ConvNeXtBlock) -> Optional[BlockParts]:
    mlp = _mlp_ops(b.mlp)
    if mlp is None or type(b.shortcut) is not nn.Identity:
        return None
    return BlockParts([b.conv_dw, b.norm, *mlp], b.gamma, b.drop_path)


def _basic_parts(b: BasicBlock) -> Optional[BlockParts]:
    if b.se is not None:
        return None
    main = [b.conv1, b.bn1, b.drop_block, b.act1, b.aa, b.conv2, b.bn2]
    return BlockParts(main, None, b.drop_path, layer_list(b.downsample), [b.act2])


def _bottleneck_parts(b: Bottleneck) -> Optional[BlockParts]:
    if b.se is not None:
        return None
    main = [b.conv1, b.bn1, b.act1, b.conv2, b.bn2, b.drop_block, b.act2, b.aa, b.conv3, b.bn3]
    return BlockParts(main, None, b.drop_path, layer_list(b.downsample), [b.act3])


register_block(ConvNeXtBlock, _convnext_parts)
register_block(BasicBlock, _basic_parts)
register_block(Bottleneck, _bottleneck_parts)
