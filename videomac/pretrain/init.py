"""The authors' initialisation of the online model (``VideoMAC._init_weights_convnextv2`` and
``_init_weights_resnet`` of their released code), applied after the encoder is built. Which rule an
encoder takes is declared by its family: the model's ``authors_init`` (``"convnext"`` or ``"resnet"``).

Their rules, by the kind of layer in their sparse network (``trunc_normal_`` is truncated at the
absolute values ±2, so std 0.02 is in effect untruncated):

==============================================  ==========================  ===============================
layer                                           ConvNeXt (V1, V2, iso)      ResNet
==============================================  ==========================  ===============================
dense stem conv, decoder proj/depthwise/pred    trunc_normal std 1, bias 0  trunc_normal std 1, bias default
encoder depthwise convs, pointwise linears      trunc_normal std 1, bias 0  (none)
encoder strided/downsample convs                trunc_normal std 0.02, 0    (none)
all other encoder convs                         (none)                      trunc_normal std 0.02, bias 0
LayerNorms                                      1 / 0                       1 / 0
GRN gamma/beta                                  0                           0
decoder linears                                 PyTorch default             PyTorch default
mask token                                      normal std 0.02             normal std 0.02
==============================================  ==========================  ===============================
"""

from __future__ import annotations

import math

import torch.nn as nn
from timm.layers import LayerNorm, LayerNorm2d
from timm.layers.grn import GlobalResponseNorm

from videomac.pretrain.config import PretrainConfig
from videomac.settings import choices

__all__ = ["INITS", "RULES", "init_authors_"]

INITS = choices(PretrainConfig, "init")
RULES = ("convnext", "resnet")  # the values a family declares as its ``authors_init``
_NORMS = (nn.LayerNorm, LayerNorm, LayerNorm2d)


def _trunc_normal_(w, std: float) -> None:
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2.0, b=2.0)


def _default_bias_(conv: nn.Conv2d) -> None:
    # nn.Conv2d.reset_parameters' bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(conv.weight[0].numel())
    nn.init.uniform_(conv.bias, -bound, bound)


def _init_norm(m: nn.Module) -> None:
    """LayerNorms 1 / 0; GRN gamma/beta 0 (what construction gives; their init leaves them)."""
    if isinstance(m, _NORMS):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, GlobalResponseNorm):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)


def _init_encoder(model: nn.Module, resnet: bool) -> None:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the dense stem conv
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            pointwise = m.kernel_size == (1, 1) and m.stride == (1, 1)
            depthwise = m.groups > 1 and m.groups == m.in_channels
            if m is first:
                std = 1.0
            elif resnet:
                std = 0.02
            else:  # ConvNeXt: depthwise and (conv-MLP) pointwise at 1, downsample convs at 0.02
                std = 1.0 if (depthwise or pointwise) else 0.02
            _trunc_normal_(m.weight, std)
            if m.bias is not None:
                _default_bias_(m) if (resnet and m is first) else nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            _trunc_normal_(m.weight, 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            _init_norm(m)


def _init_decoder(decoder: nn.Module, resnet: bool) -> None:
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d):
            _trunc_normal_(m.weight, 1.0)
            _default_bias_(m) if resnet else nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
        else:
            _init_norm(m)
    nn.init.normal_(decoder.mask_token, std=0.02)


def init_authors_(encoder: nn.Module, decoders) -> None:
    """Initialise ``encoder`` (the dense timm model inside the online SparseEncoder) and the online
    ``decoders`` in place with the authors' rule its family declares (``encoder.authors_init``)."""
    rule = getattr(encoder, "authors_init", None)
    if rule not in RULES:
        raise ValueError(
            f"{type(encoder).__name__} declares no authors' init rule (authors_init: one of {', '.join(RULES)}); "
            "use init='timm' (--init timm)"
        )
    resnet = rule == "resnet"
    _init_encoder(encoder, resnet)
    for d in decoders:
        _init_decoder(d, resnet)
