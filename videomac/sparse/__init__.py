"""The sparse execution engine: run a dense timm ConvNet on the visible patches of a mask.

It knows layers (Conv2d, LayerNorm, BatchNorm, ...), never a model class: each model family declares its
containers and residual blocks with :mod:`videomac.sparse.blocks`. Modules: :mod:`.context` (the mask of a
forward pass), :mod:`.masked` (the layer-by-layer reference backend), :mod:`.visible` (the packed backend),
:mod:`.packed` (the packed spatial kernels), :mod:`.blocks` (the registry families declare themselves in).
"""

from videomac.sparse.blocks import register_block, register_sparse_container

__all__ = ["register_block", "register_sparse_container"]
