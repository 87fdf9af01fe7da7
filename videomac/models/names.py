"""Model names: one check, with suggestions, for every entry point that takes a timm model name."""

from __future__ import annotations

import difflib

__all__ = ["check_model_name", "model_stride"]


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming the closest registered models if timm does not know ``name``."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (VideoMAC encoders: {', '.join(timm.list_models('videomac_*'))})")


def model_stride(name: str) -> int:
    """The total stride of model ``name`` (the masking patch of its pretraining), from its ``feature_info``
    (built with meta tensors: no memory, no init); 0 for a model without one."""
    import timm
    import torch

    check_model_name(name)
    with torch.device("meta"):
        info = getattr(timm.create_model(name), "feature_info", None)
    return int(info[-1]["reduction"]) if info else 0
