"""Encoders (registered with timm on import) and :class:`SparseEncoder`, which runs them with :mod:`videomac.sparse`."""

from videomac.models import (  # noqa: F401  (registers)
    timm_blocks,
    videomac_convnext,
    videomac_convnext_iso,
    videomac_resnet,
)
from videomac.models.encoder import SparseEncoder
from videomac.sparse.blocks import register_block, register_sparse_container

__all__ = ["SparseEncoder", "register_sparse_container", "register_block"]
