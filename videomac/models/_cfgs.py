"""timm pretrained_cfgs for the videomac encoders.

The encoders are self-supervised backbones, so their cfgs are headless (``num_classes=0``): a plain
``timm.create_model('videomac_rn50')`` has no classifier; pass ``num_classes=N`` to add one.
"""

from __future__ import annotations

from typing import Dict, Iterable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs


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
    )
    cfg.update(kwargs)
    return cfg


def make_default_cfgs(names: Iterable[str], first_conv: str, classifier: str):
    return generate_default_cfgs({name: base_cfg(first_conv=first_conv, classifier=classifier) for name in names})
