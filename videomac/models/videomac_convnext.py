"""ConvNeXt-V2 and ConvNeXt-V1 encoders under videomac names: exactly timm's architectures.

Each ``videomac_cnxv2_*`` builds timm's ``ConvNeXt`` with the arguments of timm's ``convnextv2_*`` of
the same size, so state_dicts move between the two with ``strict=True``.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, register_model
from timm.models.convnext import ConvNeXt

from videomac.models._cfgs import make_default_cfgs
from videomac.pretrained import resolve_pretrained

_V2 = dict(use_grn=True, ls_init_value=None)
_V2C = dict(_V2, conv_mlp=True)
# name -> (timm twin, architecture args); the small V2 sizes use conv-MLPs, as in timm.
ARCHS = {
    "videomac_cnxv2_atto": (
        "convnextv2_atto",
        dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_V2C),
    ),
    "videomac_cnxv2_femto": (
        "convnextv2_femto",
        dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), **_V2C),
    ),
    "videomac_cnxv2_pico": (
        "convnextv2_pico",
        dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), **_V2C),
    ),
    "videomac_cnxv2_nano": (
        "convnextv2_nano",
        dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), **_V2C),
    ),
    "videomac_cnxv2_t": ("convnextv2_tiny", dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_V2)),
    "videomac_cnxv2_s": ("convnextv2_small", dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_V2)),
    "videomac_cnxv2_b": ("convnextv2_base", dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_V2)),
    "videomac_cnxv2_l": ("convnextv2_large", dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **_V2)),
    "videomac_cnxv2_h": ("convnextv2_huge", dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816), **_V2)),
    "videomac_cnxv1_t": ("convnext_tiny", dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))),
    "videomac_cnxv1_s": ("convnext_small", dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))),
}

default_cfgs = make_default_cfgs(ARCHS, first_conv="stem.0", classifier="head.fc")


def _create(variant: str, pretrained: bool = False, **kwargs) -> ConvNeXt:
    kwargs = resolve_pretrained(variant, pretrained, kwargs)
    return build_model_with_cfg(
        ConvNeXt,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **dict(ARCHS[variant][1], **kwargs),
    )


def _entrypoint(variant: str):
    def fn(pretrained: bool = False, **kwargs) -> ConvNeXt:
        return _create(variant, pretrained, **kwargs)

    fn.__name__ = variant
    fn.__qualname__ = variant
    fn.__module__ = __name__
    fn.__doc__ = f"{variant}: timm's {ARCHS[variant][0]} architecture under its videomac name."
    return fn


for _name in ARCHS:
    globals()[_name] = register_model(_entrypoint(_name))
