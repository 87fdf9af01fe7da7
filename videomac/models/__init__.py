"""Encoders (registered with timm on import) and their sparse execution."""

from videomac.models import (  # noqa: F401  (registers)
    timm_blocks,
    videomac_convnext,
    videomac_convnext_iso,
    videomac_resnet,
)
from videomac.models.blocks import register_block, register_sparse_container
from videomac.models.encoder import SparseEncoder

__all__ = ["SparseEncoder", "register_sparse_container", "register_block"]
