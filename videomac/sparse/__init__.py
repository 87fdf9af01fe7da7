"""The sparse execution engine: run a dense timm ConvNet on the visible patches of a mask.

It knows layers (Conv2d, LayerNorm, BatchNorm, ...), never a model class: each model family declares its
containers and residual blocks with :mod:`videomac.sparse.blocks`. Modules: :mod:`.context` (the mask of a
forward pass), :mod:`.masked` (the layer-by-layer reference backend), :mod:`.visible` (the packed backend),
:mod:`.packed` (the packed spatial kernels), :mod:`.blocks` (the registry families declare themselves in).
"""

from typing import Dict

import torch

from videomac.sparse.blocks import register_block, register_sparse_container

__all__ = ["AUTO_BACKEND", "BACKENDS", "register_block", "register_sparse_container", "resolve_backend"]

BACKENDS = ("auto", "masked", "visible")
# The backend measured fastest per device type (pretraining steps, docs/performance.md): on the CPU
# 'visible' runs 3.8-5.3x the 'masked' steps; on an H100 'masked' ran 2.5x 'visible' (kernel launches
# and host syncs). Any other device gets the reference until someone measures it.
AUTO_BACKEND: Dict[str, str] = {"cpu": "visible", "cuda": "masked"}


def resolve_backend(backend: str, device) -> str:
    """The backend ``backend`` means on ``device``: itself, or for ``'auto'`` the one of :data:`AUTO_BACKEND`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return AUTO_BACKEND.get(torch.device(device).type, "masked")
