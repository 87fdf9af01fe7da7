"""timm pretrained_cfgs for the videomac encoders, generated from the weights registry.

The encoders are self-supervised backbones, so their cfgs are headless (``num_classes=0``): a plain
``timm.create_model('videomac_rn50')`` has no classifier; pass ``num_classes=N`` to add one. Each
registry entry becomes a tag (``videomac_rn50.yt18_authors``); the first is the default. Published Hub
entries (with a sha256) carry a hub id and the authors' releases their URL, so timm lists only those as
having weights.
"""

from __future__ import annotations

from typing import Dict, Iterable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from videomac.registry import entries_for


def base_cfg(**kwargs) -> Dict:
    cfg = dict(
        url="",
        num_classes=0,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        license="apache-2.0",
        paper_name="VideoMAC: Video Masked Autoencoders Meet ConvNets",
        paper_ids="arXiv:2402.19082",
    )
    cfg.update(kwargs)
    return cfg


def make_default_cfgs(names: Iterable[str], first_conv: str, classifier: str, reduction: int = 32):
    """One cfg per registry entry of each name (or a bare one); ``reduction`` is the model's total stride."""
    cfgs = {}
    for name in names:
        entries = entries_for(name)
        for e in entries:
            size = e.input_size
            cfgs[e.name] = base_cfg(
                first_conv=first_conv,
                classifier=classifier,
                url=e.url if e.authors else "",
                hf_hub_id=e.hub_ref if e.published else None,
                hf_hub_filename=None if e.authors else e.filename,
                input_size=(3, size, size),
                pool_size=(size // reduction, size // reduction),
                license=e.license,
                notes=(e.source or f"recipe {e.recipe}; data {e.data}",),
            )
        if not entries:
            cfgs[name] = base_cfg(first_conv=first_conv, classifier=classifier, pool_size=(224 // reduction,) * 2)
    return generate_default_cfgs(cfgs)
