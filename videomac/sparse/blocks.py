"""How a model family runs sparsely: the registration API of sparse execution.

The backends (:mod:`.masked`, :mod:`.visible`) know layers (Conv2d, LayerNorm, Linear, ...) but no
model class. Each family declares its own, in its own module:

- containers, whose ``forward`` only composes children with position-wise ops (permutes, residual
  adds, layer scale): :func:`register_sparse_container`. Any other container is refused, since it
  could mix positions;
- residual blocks: :func:`register_block` with a function listing the block's layers in forward
  order (:class:`BlockParts`), so the ``visible`` backend can run them on packed visible tokens.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.layers import activations as timm_act

__all__ = [
    "BlockParts",
    "register_sparse_container",
    "register_block",
    "is_container",
    "block_parts",
    "dense_class",
    "layer_list",
    "ZERO_PRESERVING",
]


class BlockParts(NamedTuple):
    """A residual block as ``post(drop_path(layer_scale * main(x)) + shortcut(x))``, layers in forward order."""

    main: Sequence[Optional[nn.Module]]
    layer_scale: Optional[torch.Tensor] = None
    drop_path: Optional[nn.Module] = None
    shortcut: Sequence[nn.Module] = ()
    post: Sequence[nn.Module] = ()


# Position-wise layers that map 0 to 0: they keep masked positions at zero unconverted.
ZERO_PRESERVING = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Hardswish,
    nn.Mish,
    nn.Dropout,
    DropPath,
    timm_act.GELU,
    timm_act.GELUTanh,
    timm_act.Swish,
    timm_act.Mish,
    timm_act.QuickGELU,
    timm_act.HardSwish,
    timm_act.Tanh,
)

_CONTAINERS = {nn.Sequential, nn.ModuleList, nn.ModuleDict}
_BLOCKS: Dict[Type[nn.Module], Callable[[nn.Module], Optional[BlockParts]]] = {}


def register_sparse_container(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Declare that ``cls.forward`` only composes its children with position-wise ops."""
    _CONTAINERS.add(cls)
    return cls


def register_block(cls: Type[nn.Module], parts: Callable[[nn.Module], Optional[BlockParts]]) -> None:
    """Declare a residual block class and how its layers run: ``parts(block)`` returns its
    :class:`BlockParts`, or None for an instance the packed path cannot run (it then stays masked)."""
    register_sparse_container(cls)
    _BLOCKS[cls] = parts


def dense_class(m: nn.Module) -> Type[nn.Module]:
    """The original class of a (possibly converted) module."""
    return getattr(m, "_vm_dense_cls", type(m))


def is_container(cls: Type[nn.Module]) -> bool:
    return cls in _CONTAINERS


def block_parts(m: nn.Module) -> Optional[BlockParts]:
    fn = _BLOCKS.get(dense_class(m))
    return fn(m) if fn is not None else None


def layer_list(m: Optional[nn.Module]) -> List[nn.Module]:
    """A Sequential's layers, a single layer as a list, or [] for None."""
    if m is None:
        return []
    return list(m) if dense_class(m) is nn.Sequential else [m]
