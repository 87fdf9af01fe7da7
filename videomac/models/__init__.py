"""Encoders (registered with timm on import) and their sparse execution."""

from videomac.models import videomac_convnext, videomac_resnet  # noqa: F401  (registers with timm)
from videomac.models.sparse import SparseEncoder, register_sparse_container

__all__ = ["SparseEncoder", "register_sparse_container"]
