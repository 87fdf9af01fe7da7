"""Independent plain-PyTorch reference of the VideoMAC authors' released pretraining code.

Written from a reading of github.com/NUST-Machine-Intelligence-Laboratory/VideoMAC (commit
44558a1: models/convnextv2_sparse.py, models/convnextv1_sparse.py, models/utils.py,
models/video_mac.py, models/dataloader_mac.py, main_pretrain.py, engine_pretrain.py,
tools/utils.py, tools/convert_pth.py, scripts/*.sh) and of the MinkowskiEngine fork their code runs
on (github.com/shwoo93/MinkowskiEngine: MinkowskiConvolution.py, MinkowskiDepthwiseConvolution.py,
MinkowskiOps.py, MinkowskiSparseTensor.py, src/kernel_region.hpp). Nothing here imports
``videomac``: tests use it to check the library's fidelity numerically.

Contents
--------
* ``make_authors_convnext_state``: a random checkpoint in exactly the layout ``save_model_distill``
  writes (``model_online`` / ``model_target`` / ``online_without_ddp`` / ``target_without_ddp`` /
  ``optimizer`` / ``epoch`` / ``scaler`` / ``args``), MinkowskiEngine parameter shapes included.
* ``authors_convnext_forward``: their sparse encoder's forward, written densely. With ``mask=None``
  it is exactly their network on an unmasked input; with a mask it follows MinkowskiEngine's
  submanifold semantics (zero outside the active set after every layer, GRN's L2 norm over the active
  points of the WHOLE batch, strided-conv output active where any input of its window is active).
* ``me_kernel_to_dense`` and ``authors_encoder_to_timm``: MinkowskiEngine kernel layout -> dense
  conv weight, and the authors' encoder keys -> timm ``ConvNeXt`` keys (+ the extra stage norms).
* ``authors_cosine_scheduler`` / ``authors_momentum_schedule`` / ``authors_momentum_at`` /
  ``authors_lr_at``: their schedules and how the engine indexes them.
* ``authors_pairs``: the (video, t) pairs YT18Dataset enumerates.
* ``authors_patchify``, ``authors_random_mask``, ``authors_forward_loss``, ``authors_cons_loss``:
  their loss path.
* ``authors_weight_decay_split`` and ``authors_init_rule``: their optimizer groups and init, per key.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

AUTHORS_COMMIT = "44558a1"
LN_EPS = 1e-6  # every LayerNorm of their encoder/decoder (stem LN, MinkowskiLayerNorm, norm0..3)
GRN_EPS = 1e-6  # MinkowskiGRN and the dense decoder GRN: Gx / (mean_c Gx + 1e-6)

Entry = Tuple[str, Tuple[int, ...], str]  # (key, shape, kind)


# --------------------------------------------------------------------------------------------
# Checkpoint layout
# --------------------------------------------------------------------------------------------


def _block_entries(prefix: str, c: int, version: int) -> List[Entry]:
    """One sparse ConvNeXt block, in its module registration order (models/convnextv2_sparse.py
    Block.__init__: dwconv, norm, pwconv1, act, pwconv2, grn, drop_path; V1: no grn)."""
    e = [
        (f"{prefix}.dwconv.kernel", (49, c), "me_dw_kernel"),  # MinkowskiDepthwiseConvolution k=7, D=2
        (f"{prefix}.dwconv.bias", (1, c), "me_bias"),
        (f"{prefix}.norm.ln.weight", (c,), "ln_weight"),  # MinkowskiLayerNorm keeps nn.LayerNorm in .ln
        (f"{prefix}.norm.ln.bias", (c,), "ln_bias"),
        (f"{prefix}.pwconv1.linear.weight", (4 * c, c), "linear_weight"),  # MinkowskiLinear -> .linear
        (f"{prefix}.pwconv1.linear.bias", (4 * c,), "bias"),
        (f"{prefix}.pwconv2.linear.weight", (c, 4 * c), "linear_weight"),
        (f"{prefix}.pwconv2.linear.bias", (c,), "bias"),
    ]
    if version == 2:
        e += [
            (f"{prefix}.grn.gamma", (1, 4 * c), "grn"),  # MinkowskiGRN: zeros(1, dim)
            (f"{prefix}.grn.beta", (1, 4 * c), "grn"),
        ]
    return e


def authors_encoder_entries(
    version: int, depths, dims, isotropic: bool = False, in_chans: int = 3, patch_size: int = 16
) -> List[Entry]:
    """(key, shape, kind) of the authors' encoder state_dict, WITHOUT the ``encoder.`` prefix, in
    their state_dict order."""
    if version not in (1, 2):
        raise ValueError("version must be 1 or 2")
    e: List[Entry] = []
    if isotropic:
        if version != 2:
            raise ValueError("the authors only have an isotropic ConvNeXt-V2")
        d, c = int(depths), int(dims)
        e.append(("stem.weight", (c, in_chans, patch_size, patch_size), "conv_weight"))  # nn.Conv2d
        e.append(("stem.bias", (c,), "bias"))
        for j in range(d):
            e += _block_entries(f"blocks.{j}", c, 2)
        e.append(("norm.ln.weight", (c,), "ln_weight"))
        e.append(("norm.ln.bias", (c,), "ln_bias"))
        return e
    depths, dims = list(depths), list(dims)
    # downsample_layers.0 = stem: dense nn.Conv2d(k=4, s=4) + their channels_first LayerNorm
    e.append(("downsample_layers.0.0.weight", (dims[0], in_chans, 4, 4), "conv_weight"))
    e.append(("downsample_layers.0.0.bias", (dims[0],), "bias"))
    e.append(("downsample_layers.0.1.weight", (dims[0],), "ln_weight"))  # custom LayerNorm: no .ln
    e.append(("downsample_layers.0.1.bias", (dims[0],), "ln_bias"))
    for i in range(1, 4):
        e.append((f"downsample_layers.{i}.0.ln.weight", (dims[i - 1],), "ln_weight"))
        e.append((f"downsample_layers.{i}.0.ln.bias", (dims[i - 1],), "ln_bias"))
        # MinkowskiConvolution(k=2, s=2, bias=True, D=2): kernel (k^D, C_in, C_out), bias (1, C_out)
        e.append((f"downsample_layers.{i}.1.kernel", (4, dims[i - 1], dims[i]), "me_kernel"))
        e.append((f"downsample_layers.{i}.1.bias", (1, dims[i]), "me_bias"))
    for i in range(4):
        for j in range(depths[i]):
            e += _block_entries(f"stages.{i}.{j}", dims[i], version)
    for i in range(4):
        e.append((f"norm{i}.ln.weight", (dims[i],), "ln_weight"))
        e.append((f"norm{i}.ln.bias", (dims[i],), "ln_bias"))
    return e


def authors_model_entries(
    version: int,
    depths,
    dims,
    isotropic: bool = False,
    in_chans: int = 3,
    decoder_dim: int = 512,
    decoder_depth: int = 1,
    patch_size: Optional[int] = None,
) -> List[Entry]:
    """(key, shape, kind) of the whole ``VideoMAC`` module's state_dict (models/video_mac.py), in
    state_dict order: its own parameter ``mask_token`` first, then encoder, proj, decoder, pred.
    Note the decoder block registers ``grn`` BEFORE ``pwconv2`` (the encoder block after)."""
    if patch_size is None:
        patch_size = 16 if isotropic else 32
    c_last = int(dims) if isotropic else list(dims)[-1]
    e: List[Entry] = [("mask_token", (1, decoder_dim, 1, 1), "mask_token")]
    e += [
        ("encoder." + k, s, kind)
        for k, s, kind in authors_encoder_entries(version, depths, dims, isotropic, in_chans, patch_size)
    ]
    e.append(("proj.weight", (decoder_dim, c_last, 1, 1), "conv_weight"))
    e.append(("proj.bias", (decoder_dim,), "bias"))
    for j in range(decoder_depth):
        p, d = f"decoder.{j}", decoder_dim
        e += [
            (f"{p}.dwconv.weight", (d, 1, 7, 7), "conv_weight"),
            (f"{p}.dwconv.bias", (d,), "bias"),
            (f"{p}.norm.weight", (d,), "ln_weight"),  # their custom LayerNorm (channels_last)
            (f"{p}.norm.bias", (d,), "ln_bias"),
            (f"{p}.pwconv1.weight", (4 * d, d), "linear_weight"),  # nn.Linear
            (f"{p}.pwconv1.bias", (4 * d,), "bias"),
            (f"{p}.grn.gamma", (1, 1, 1, 4 * d), "grn"),  # dense GRN: zeros(1, 1, 1, dim)
            (f"{p}.grn.beta", (1, 1, 1, 4 * d), "grn"),
            (f"{p}.pwconv2.weight", (d, 4 * d), "linear_weight"),
            (f"{p}.pwconv2.bias", (d,), "bias"),
        ]
    e.append(("pred.weight", (patch_size**2 * in_chans, decoder_dim, 1, 1), "conv_weight"))
    e.append(("pred.bias", (patch_size**2 * in_chans,), "bias"))
    return e


def _fan_in(shape: Tuple[int, ...], kind: str) -> int:
    if kind == "conv_weight":
        return int(np.prod(shape[1:]))
    if kind == "me_kernel":
        return shape[0] * shape[1]
    if kind == "me_dw_kernel":
        return shape[0]
    if kind == "linear_weight":
        return shape[1]
    return 1


def _random_value(shape, kind, g: torch.Generator) -> torch.Tensor:
    r = torch.randn(shape, generator=g)
    if kind in ("conv_weight", "me_kernel", "me_dw_kernel", "linear_weight"):
        return r / math.sqrt(_fan_in(shape, kind))
    if kind == "ln_weight":
        return 1.0 + 0.1 * r
    if kind in ("ln_bias", "bias", "me_bias"):
        return 0.05 * r
    if kind == "grn":
        return 0.1 * r
    if kind == "mask_token":
        return 0.02 * r
    raise ValueError(kind)


def _model_name(version, depths, dims, isotropic) -> str:
    if isotropic:
        return {384: "mac_small_isotropic", 768: "mac_base_isotropic"}.get(int(dims), "custom")
    key = (tuple(depths), tuple(dims))
    names = {
        2: {
            ((3, 3, 9, 3), (96, 192, 384, 768)): "mac_tiny",
            ((3, 3, 27, 3), (96, 192, 384, 768)): "mac_small",
            ((3, 3, 27, 3), (128, 256, 512, 1024)): "mac_base",
        },
        1: {
            ((3, 3, 9, 3), (96, 192, 384, 768)): "mac_cnxv1_tiny",
            ((3, 3, 27, 3), (96, 192, 384, 768)): "mac_cnxv1_small",
        },
    }
    return names[version].get(key, "custom")


def authors_weight_decay_split(named_shapes: Iterable[Tuple[str, Sequence[int]]]):
    """timm ``param_groups_weight_decay(model, 0.05)`` as main_pretrain.py:205 calls it (no
    ``no_weight_decay_list``): a parameter goes to the no-decay group iff ``ndim <= 1`` or its
    name ends with ``.bias``. Returns (no_decay_names, decay_names), each in parameter order.
    Consequence on their layout: ``mask_token`` (1,D,1,1), every GRN gamma/beta ((1,4C) sparse,
    (1,1,1,4D) decoder) and the depthwise kernels (49,C) ARE decayed; the sparse biases (1,C) are
    not (name ends with .bias)."""
    no_decay, decay = [], []
    for name, shape in named_shapes:
        if len(tuple(shape)) <= 1 or name.endswith(".bias"):
            no_decay.append(name)
        else:
            decay.append(name)
    return no_decay, decay


def make_authors_convnext_state(
    version: int,
    depths,
    dims,
    seed: int = 0,
    isotropic: bool = False,
    decoder_dim: int = 512,
    in_chans: int = 3,
    patch_size: Optional[int] = None,
    ddp: bool = False,
    target_same: bool = False,
    include_args: bool = True,
    epoch: int = 99,
) -> Dict:
    """A random checkpoint laid out exactly as their ``utils.save_model_distill`` writes it
    (tools/utils.py:467-483)::

        {"model_online": ..., "model_target": ..., "online_without_ddp": ...,
         "target_without_ddp": ..., "optimizer": ..., "epoch": int, "scaler": ..., "args": Namespace}

    Each model entry is the full ``VideoMAC`` state_dict (``mask_token``, ``encoder.*``, ``proj.*``,
    ``decoder.*``, ``pred.*``). Their scripts run one process without DDP, so ``model_online`` is the
    same dict as ``online_without_ddp``; ``ddp=True`` gives ``model_online`` the ``module.`` prefix
    DDP adds (the target is never wrapped). The target is the online model plus a small
    perturbation (an EMA copy that drifted), unless ``target_same``. tools/convert_pth.py exports
    ``online_without_ddp`` (the ONLINE model), not the target.

    Values are random with non-trivial magnitudes: weights ~ N(0, 1/fan_in), LayerNorm weights
    1 +- 0.1, biases and LN biases 0.05 N(0,1), GRN gamma/beta 0.1 N(0,1), mask token 0.02 N(0,1).
    ``args`` is an ``argparse.Namespace`` as in theirs: ``torch.load(weights_only=True)`` of a file
    holding it needs ``argparse.Namespace`` allow-listed (``include_args=False`` leaves it out)."""
    if patch_size is None:
        patch_size = 16 if isotropic else 32
    entries = authors_model_entries(version, depths, dims, isotropic, in_chans, decoder_dim, 1, patch_size)
    g = torch.Generator().manual_seed(seed)
    online = OrderedDict((k, _random_value(s, kind, g)) for k, s, kind in entries)
    if target_same:
        target = OrderedDict((k, v.clone()) for k, v in online.items())
    else:
        gt = torch.Generator().manual_seed(seed + 1_000_003)
        target = OrderedDict(
            (k, v + 0.01 * (v.abs().mean() + 1e-3) * torch.randn(v.shape, generator=gt)) for k, v in online.items()
        )

    no_decay, decay = authors_weight_decay_split((k, s) for k, s, _ in entries)
    index = {k: i for i, (k, _, _) in enumerate(entries)}
    lr = 1e-3 * (512 if version == 2 else 256) / 256
    common = dict(
        lr=0.0,
        betas=(0.9, 0.95),
        eps=1e-8,
        amsgrad=False,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
    )
    optimizer = {
        "state": {},
        "param_groups": [
            dict(common, weight_decay=0.0, params=[index[k] for k in no_decay]),
            dict(common, weight_decay=0.05, params=[index[k] for k in decay]),
        ],
    }
    ckpt = {
        "model_online": OrderedDict(("module." + k if ddp else k, v) for k, v in online.items()),
        "model_target": target,
        "online_without_ddp": online,
        "target_without_ddp": target,
        "optimizer": optimizer,
        "epoch": epoch,
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 0,
        },
    }
    if include_args:
        ckpt["args"] = argparse.Namespace(
            batch_size=512 if version == 2 else 256,
            epochs=100,
            warmup_epochs=10,
            update_freq=1,
            use_amp=True,
            use_wandb=False,
            model=_model_name(version, depths, dims, isotropic),
            input_size=224,
            mask_ratio=0.75,
            patch_size=patch_size,
            norm_pix_loss=True,
            decoder_depth=1,
            decoder_embed_dim=decoder_dim,
            weight_decay=0.05,
            lr=lr,
            blr=1e-3,
            min_lr=0.0,
            data_path="./data/ytb18",
            output_dir="./checkpoints/mac",
            log_dir=None,
            device="cuda",
            seed=0,
            resume="",
            auto_resume=True,
            save_ckpt=True,
            save_ckpt_freq=5,
            save_ckpt_num=10,
            start_epoch=0,
            num_workers=16,
            pin_mem=True,
            crop_pct=None,
            world_size=1,
            local_rank=-1,
            dist_on_itp=False,
            dist_url="env://",
            gamma=1.0,
            momentum_target=0.996,
            distributed=ddp,
        )
    return ckpt


# --------------------------------------------------------------------------------------------
# Layout conversion
# --------------------------------------------------------------------------------------------


def me_kernel_to_dense(kernel: torch.Tensor) -> torch.Tensor:
    """MinkowskiEngine kernel -> dense ``nn.Conv2d`` weight.

    ME stores a (k^D, C_in, C_out) kernel (depthwise: (k^D, C)). Its HYPER_CUBE kernel index runs
    over the spatial axes with the FIRST axis fastest (src/kernel_region.hpp: ``kernel_index %
    kernel_size[i]`` for i = 0, 1, ...); with ``to_sparse`` on an NCHW tensor axis 0 is H and axis 1
    is W, so index = h + k * w (odd k: offsets centred, h, w in [-(k//2), k//2] shifted by k//2; even
    k: offsets 0..k-1). Dense weight W[o, c, h, w] = kernel[h + k * w, c, o]."""
    if kernel.ndim == 3:
        kv, cin, cout = kernel.shape
        k = math.isqrt(kv)
        assert k * k == kv
        return kernel.reshape(k, k, cin, cout).permute(3, 2, 1, 0).contiguous()  # [w,h,c,o]->[o,c,h,w]
    if kernel.ndim == 2:
        kv, c = kernel.shape
        k = math.isqrt(kv)
        assert k * k == kv
        return kernel.reshape(k, k, c).permute(2, 1, 0).unsqueeze(1).contiguous()  # (C, 1, k, k)
    raise ValueError("expected a (k^2, C_in, C_out) or (k^2, C) kernel")


def _encoder_state(state: Dict) -> Dict[str, torch.Tensor]:
    """Accept a full checkpoint, a VideoMAC state_dict (``encoder.``/``module.encoder.`` keys) or a
    bare encoder state_dict, and return the bare encoder state_dict."""
    if "online_without_ddp" in state:
        state = state["online_without_ddp"]
    out = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith("encoder."):
            out[k[len("encoder.") :]] = v
        elif not k.startswith(("mask_token", "proj.", "decoder.", "pred.")):
            out[k] = v
    return out


def authors_encoder_to_timm(state: Dict, version: int, depths, conv_mlp: bool = False):
    """Map the authors' encoder (hierarchical ConvNeXt) onto timm ``ConvNeXt`` names.

    Returns ``(timm_state, stage_norms)``: ``timm_state`` holds every timm encoder key (no head:
    ``head.norm`` / ``head.fc`` have no counterpart), ``stage_norms`` maps ``norm{i}.weight`` /
    ``norm{i}.bias`` (the LayerNorm after stage i) which timm's ConvNeXt does not have. The decoder
    keys (``mask_token``, ``proj``, ``decoder``, ``pred``) are dropped. ``conv_mlp``: timm builds
    fc1/fc2 as 1x1 convs (weights (out, in, 1, 1)) for convnextv2_atto/femto/pico/nano."""
    sd = _encoder_state(state)
    out, norms = OrderedDict(), OrderedDict()
    out["stem.0.weight"] = sd["downsample_layers.0.0.weight"]
    out["stem.0.bias"] = sd["downsample_layers.0.0.bias"]
    out["stem.1.weight"] = sd["downsample_layers.0.1.weight"]
    out["stem.1.bias"] = sd["downsample_layers.0.1.bias"]
    for i in range(4):
        if i > 0:
            p = f"downsample_layers.{i}"
            out[f"stages.{i}.downsample.0.weight"] = sd[f"{p}.0.ln.weight"]
            out[f"stages.{i}.downsample.0.bias"] = sd[f"{p}.0.ln.bias"]
            out[f"stages.{i}.downsample.1.weight"] = me_kernel_to_dense(sd[f"{p}.1.kernel"])
            out[f"stages.{i}.downsample.1.bias"] = sd[f"{p}.1.bias"].reshape(-1)
        for j in range(list(depths)[i]):
            a, t = f"stages.{i}.{j}", f"stages.{i}.blocks.{j}"
            out[f"{t}.conv_dw.weight"] = me_kernel_to_dense(sd[f"{a}.dwconv.kernel"])
            out[f"{t}.conv_dw.bias"] = sd[f"{a}.dwconv.bias"].reshape(-1)
            out[f"{t}.norm.weight"] = sd[f"{a}.norm.ln.weight"]
            out[f"{t}.norm.bias"] = sd[f"{a}.norm.ln.bias"]
            for n in (1, 2):
                w = sd[f"{a}.pwconv{n}.linear.weight"]
                out[f"{t}.mlp.fc{n}.weight"] = w[:, :, None, None] if conv_mlp else w
                out[f"{t}.mlp.fc{n}.bias"] = sd[f"{a}.pwconv{n}.linear.bias"]
                if n == 1 and version == 2:
                    out[f"{t}.mlp.grn.weight"] = sd[f"{a}.grn.gamma"].reshape(-1)
                    out[f"{t}.mlp.grn.bias"] = sd[f"{a}.grn.beta"].reshape(-1)
        norms[f"norm{i}.weight"] = sd[f"norm{i}.ln.weight"]
        norms[f"norm{i}.bias"] = sd[f"norm{i}.ln.bias"]
    return out, norms


# --------------------------------------------------------------------------------------------
# Encoder forward
# --------------------------------------------------------------------------------------------


def _ln_channels_first(x, w, b):
    # their LayerNorm(data_format="channels_first") and MinkowskiLayerNorm (nn.LayerNorm on the
    # point features) compute the same per-position normalisation over C (biased variance).
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, LN_EPS).permute(0, 3, 1, 2)


def _active_grid(mask, batch: int) -> Optional[torch.Tensor]:
    """mask: None, (B, L) with 1 = removed (their convention, square grid), or bool (B, h, w) with
    True = masked. Returns float (B, 1, h, w) with 1 = visible."""
    if mask is None:
        return None
    m = torch.as_tensor(mask)
    if m.ndim == 2:
        p = math.isqrt(m.shape[1])
        assert p * p == m.shape[1], "their masks are square grids"
        m = m.reshape(-1, p, p)
    assert m.shape[0] == batch
    return (1.0 - m.float()).unsqueeze(1)


def _grn_authors(y_cl, gamma, beta, act_cl):
    """MinkowskiGRN (models/utils.py:12-29) on channels-last features y (B, H, W, C): the L2 norm
    of each channel over ALL points of the sparse tensor, i.e. all active positions of all samples
    of the batch at once; Nx = Gx / (mean_C Gx + 1e-6); out = gamma * (x * Nx) + beta + x."""
    c = y_cl.shape[-1]
    pts = y_cl.reshape(-1, c)
    if act_cl is not None:
        pts = pts[act_cl.reshape(-1) > 0]
    gx = torch.norm(pts, p=2, dim=0, keepdim=True)  # (1, C)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)
    return gamma.reshape(1, c) * (y_cl * nx) + beta.reshape(1, c) + y_cl


def _block_forward(x, sd, prefix, version, act):
    """Sparse ConvNeXt block (convnextv2_sparse.py:41-50 / convnextv1_sparse.py:40-49), densely.
    ``act`` (B,1,H,W) or None: multiply every layer's output by it (submanifold semantics)."""

    def keep(t):
        return t if act is None else t * act

    def keep_cl(t):
        return t if act is None else t * act.permute(0, 2, 3, 1)

    c = x.shape[1]
    y = F.conv2d(
        x,
        me_kernel_to_dense(sd[f"{prefix}.dwconv.kernel"]),
        sd[f"{prefix}.dwconv.bias"].reshape(-1),
        padding=3,
        groups=c,
    )
    y = keep(y).permute(0, 2, 3, 1)
    y = keep_cl(F.layer_norm(y, (c,), sd[f"{prefix}.norm.ln.weight"], sd[f"{prefix}.norm.ln.bias"], LN_EPS))
    y = keep_cl(F.linear(y, sd[f"{prefix}.pwconv1.linear.weight"], sd[f"{prefix}.pwconv1.linear.bias"]))
    y = F.gelu(y)  # MinkowskiGELU = torch.nn.GELU() (exact erf form)
    if version == 2:
        act_cl = None if act is None else act.permute(0, 2, 3, 1)
        y = keep_cl(_grn_authors(y, sd[f"{prefix}.grn.gamma"], sd[f"{prefix}.grn.beta"], act_cl))
    y = keep_cl(F.linear(y, sd[f"{prefix}.pwconv2.linear.weight"], sd[f"{prefix}.pwconv2.linear.bias"]))
    return x + y.permute(0, 3, 1, 2)  # drop_path: rate 0 in all their models (not passed by VideoMAC)


def authors_convnext_forward(
    state: Dict,
    x: torch.Tensor,
    version: int,
    depths,
    dims,
    isotropic: bool = False,
    mask=None,
    return_stages: bool = False,
):
    """The authors' sparse ConvNeXt-V2 (version=2) / V1 (version=1) encoder forward in plain
    PyTorch, directly on their checkpoint layout. Returns the last feature map (B, C, H/32, W/32)
    (isotropic: (B, C, H/16, W/16)); ``return_stages`` also returns each stage's output after its
    ``norm{i}``.

    With ``mask=None`` and B=1 this is exactly their network (an unmasked sparse tensor equals its
    dense form). For B>1 their GRN pools over the whole batch; that is reproduced here too. With a
    mask ((B, L) 1 = removed, or bool (B, h, w) True = masked) it follows MinkowskiEngine's
    semantics: features exist only at active positions (zero elsewhere after every layer), the
    2x2/2 conv's output is active where any input of its window is, GRN uses the active points of the
    whole batch. Not reproduced: their ``x.dense()`` sizes its output by the largest active
    coordinate in the batch, so when the last row/column of the grid is masked in every sample
    their output is smaller; here it is always the full size.
    """
    sd = _encoder_state(state)
    b = x.shape[0]
    active = _active_grid(mask, b)
    if isotropic:
        x = F.conv2d(x, sd["stem.weight"], sd["stem.bias"], stride=sd["stem.weight"].shape[-1])
        act = None
        if active is not None:
            assert active.shape[-2:] == x.shape[-2:], "isotropic: the mask grid is the stem grid"
            act = active
            x = x * act
        for j in range(int(depths)):
            x = _block_forward(x, sd, f"blocks.{j}", 2, act)
        x = _ln_channels_first(x, sd["norm.ln.weight"], sd["norm.ln.bias"])
        return x if act is None else x * act

    # stem: dense conv 4x4/4 + channels-first LayerNorm, THEN x *= (1 - mask)
    x = F.conv2d(x, sd["downsample_layers.0.0.weight"], sd["downsample_layers.0.0.bias"], stride=4)
    x = _ln_channels_first(x, sd["downsample_layers.0.1.weight"], sd["downsample_layers.0.1.bias"])
    act = None
    if active is not None:
        scale = x.shape[-1] // active.shape[-1]
        act = active.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        x = x * act
    stages = []
    for i in range(4):
        if i > 0:
            p = f"downsample_layers.{i}"
            x = _ln_channels_first(x, sd[f"{p}.0.ln.weight"], sd[f"{p}.0.ln.bias"])
            if act is not None:
                x = x * act
            x = F.conv2d(x, me_kernel_to_dense(sd[f"{p}.1.kernel"]), sd[f"{p}.1.bias"].reshape(-1), stride=2)
            if act is not None:
                act = F.max_pool2d(act, 2)
                x = x * act
        for j in range(list(depths)[i]):
            x = _block_forward(x, sd, f"stages.{i}.{j}", version, act)
        # LayerNorm after EVERY stage, in the main path (convnextv2_sparse.py:133-137)
        x = _ln_channels_first(x, sd[f"norm{i}.ln.weight"], sd[f"norm{i}.ln.bias"])
        if act is not None:
            x = x * act
        stages.append(x)
    return (x, stages) if return_stages else x


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def authors_cosine_scheduler(
    base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0, warmup_steps=-1
) -> np.ndarray:
    """tools/utils.py:574-591 ``cosine_scheduler``: optional linear warm-up (np.linspace, both
    ends included), then final + (base - final)/2 * (1 + cos(pi * i / n)) for i in 0..n-1, where
    n = epochs * niter_per_ep - warmup_iters (so the last value is just short of ``final``)."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    n = epochs * niter_per_ep - warmup_iters
    schedule = np.array(
        [final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    )
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def authors_momentum_schedule(base, final, epochs, niter_per_ep) -> np.ndarray:
    """main_pretrain.py:212-214: ``cosine_scheduler(args.momentum_target, 1, args.epochs,
    len(data_loader_train))`` (no warm-up); niter_per_ep = len(data_loader_train) =
    pairs_per_rank // batch_size (drop_last=True)."""
    return authors_cosine_scheduler(base, final, epochs, niter_per_ep)


def authors_momentum_at(schedule, epoch: int, data_iter_step: int) -> float:
    """engine_pretrain.py:75: ``ms = momentum_schedule[data_iter_step]``, data_iter_step being the
    step WITHIN the epoch (``enumerate`` restarts every epoch). ``epoch`` is ignored: every epoch
    reuses the first ``niter_per_ep`` entries, so with 100 epochs m stays in [0.996, 0.996001]."""
    del epoch
    return float(schedule[data_iter_step])


def authors_lr(blr: float, batch_size: int, update_freq: int = 1, world_size: int = 1) -> float:
    """main_pretrain.py:183-187: lr = blr * (batch_size * update_freq * world_size) / 256."""
    return blr * batch_size * update_freq * world_size / 256


def authors_lr_at(epoch_float: float, lr: float, epochs: int, warmup_epochs: int, min_lr: float = 0.0) -> float:
    """tools/utils.py:593-605 ``adjust_learning_rate``, called every iteration with
    epoch_float = data_iter_step / len(data_loader) + epoch (engine_pretrain.py:28-29): linear
    warm-up from exactly 0, then half-cycle cosine to min_lr."""
    if epoch_float < warmup_epochs:
        return lr * epoch_float / warmup_epochs
    progress = (epoch_float - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def authors_pairs(frame_counts: Sequence[int], gap: int = 1) -> List[Tuple[int, int]]:
    """YT18Dataset (models/dataloader_mac.py:38-50; K400Dataset the same, lines 84-90): for each
    video directory (``glob`` order), its files sorted by name, append (frame_i, frame_{i+1}) for
    i in range(n - 1). A one-frame video gives no pair. Their code has NO gap option (always the
    next file; on YouTube-VOS 2018 ``train`` the JPEGs are every 5th raw frame, so "consecutive"
    is 5 raw frames apart). ``gap > 1`` here is the natural extension (t, t + gap) for t in
    range(n - gap), not something their code does."""
    if gap < 1:
        raise ValueError("gap must be >= 1")
    return [(v, t) for v, n in enumerate(frame_counts) for t in range(max(0, n - gap))]


# --------------------------------------------------------------------------------------------
# Masking and losses (models/video_mac.py, tools/utils.py)
# --------------------------------------------------------------------------------------------


def authors_random_mask(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """video_mac.py:192-208 ``gen_random_mask`` given its noise (N, L) (theirs: torch.randn):
    keep the int(L * (1 - ratio)) patches with the smallest noise; returns float (N, L), 1 =
    removed. The target branch reuses the online call's ids_restore, so both frames share it."""
    n, num = noise.shape
    len_keep = int(num * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, num, device=noise.device)
    mask[:, :len_keep] = 0
    return torch.gather(mask, dim=1, index=ids_restore)


def authors_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """video_mac.py:164-176: (N, 3, H, W) -> (N, L, p*p*3), L row-major over the grid, values of a
    patch ordered (row, col, channel) with the channel fastest. The pred conv's output channel
    k = (row * p + col) * 3 + channel."""
    n, c, h, w = imgs.shape
    assert h == w and h % p == 0
    g = h // p
    x = imgs.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # n h w p q c
    return x.reshape(n, g * g, p * p * c)


def authors_forward_loss(imgs, pred, mask, p: int, norm_pix_loss: bool = True) -> torch.Tensor:
    """video_mac.py:238-258: pred (N, p*p*3, h, w) or (N, L, p*p*3); per-patch normalised targets
    with torch's UNBIASED variance (``target.var(dim=-1)``, Bessel correction) and eps 1e-6 inside
    the sqrt; MSE mean over the patch's values, then sum(loss * mask) / sum(mask)."""
    if pred.ndim == 4:
        n, c = pred.shape[:2]
        pred = pred.reshape(n, c, -1).transpose(1, 2)
    target = authors_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def authors_cons_loss(online_pred, online_mask, target_pred) -> torch.Tensor:
    """tools/utils.py:678-689: MSE between the (N, p*p*3, h, w) predictions, target detached,
    mean over channels, averaged over the masked patches."""
    n, c = online_pred.shape[:2]
    o = online_pred.reshape(n, c, -1).transpose(1, 2)
    t = target_pred.reshape(n, c, -1).transpose(1, 2).detach()
    loss = ((o - t) ** 2).mean(dim=-1)
    return (loss * online_mask).sum() / online_mask.sum()


# --------------------------------------------------------------------------------------------
# Init, per key
# --------------------------------------------------------------------------------------------


def authors_init_rule(key: str, mode: str = "convnext") -> Tuple:
    """What their ``VideoMAC._init_weights_convnextv2`` (mode="convnext", V1 and V2) or
    ``_init_weights_resnet`` (mode="resnet") leaves in a parameter of the ONLINE model, by its
    checkpoint key (video_mac.py:122-162; applied with ``self.apply`` to the whole VideoMAC at the
    end of __init__; the target is built the same way and then overwritten by
    ``load_state_dict(online.state_dict())``, main_pretrain.py:198-200). timm's ``trunc_normal_``
    bounds a=-2, b=2 are ABSOLUTE values (so std 0.02 is in effect untruncated). Returns one of
    ("trunc_normal", std, a, b), ("normal", std), ("const", value), ("torch_default",)."""
    k = key[len("module.") :] if key.startswith("module.") else key
    if k == "mask_token":
        return ("normal", 0.02)  # nn.init.normal_, NOT truncated
    if k.endswith(".kernel"):
        # MinkowskiConvolution (downsample 2x2/2 convs; all ResNet sparse convs): std 0.02.
        # MinkowskiDepthwiseConvolution (not a MinkowskiConvolution subclass): timm default std 1.
        if ".dwconv." in k and mode == "convnext":
            return ("trunc_normal", 1.0, -2.0, 2.0)
        return ("trunc_normal", 0.02, -2.0, 2.0)
    if ".linear." in k:  # MinkowskiLinear
        return ("trunc_normal", 1.0, -2.0, 2.0) if k.endswith("weight") else ("const", 0.0)
    if ".ln." in k:  # nn.LayerNorm inside MinkowskiLayerNorm
        return ("const", 1.0) if k.endswith("weight") else ("const", 0.0)
    if ".grn." in k:
        return ("const", 0.0)  # zeros at construction, not touched by the init
    dense_convs = ("encoder.downsample_layers.0.0.", "encoder.stem.0.", "encoder.stem.", "proj.", "pred.")
    is_dense_conv = k.startswith(dense_convs) or (k.startswith("decoder.") and ".dwconv." in k)
    if is_dense_conv and not k.startswith("encoder.stem.1."):
        if k.endswith("weight"):
            return ("trunc_normal", 1.0, -2.0, 2.0)  # trunc_normal_(w.view(out, -1)): same law
        # bias: ConvNeXt init zeroes it; the ResNet init has the zeroing commented out
        return ("const", 0.0) if mode == "convnext" else ("torch_default",)
    # their custom LayerNorm (stem LN, decoder LN): nn.Parameter(ones)/(zeros), not nn.LayerNorm
    decoder_ln = k.startswith("decoder.") and ".norm." in k
    if k.endswith(("downsample_layers.0.1.weight", "stem.1.weight")) or (decoder_ln and k.endswith("weight")):
        return ("const", 1.0)
    if k.endswith(("downsample_layers.0.1.bias", "stem.1.bias")) or (decoder_ln and k.endswith("bias")):
        return ("const", 0.0)
    if k.startswith("decoder.") and ".pwconv" in k:
        return ("torch_default",)  # nn.Linear: kaiming_uniform(a=sqrt 5), bias U(+-1/sqrt(fan_in))
    return ("torch_default",)


# --------------------------------------------------------------------------------------------
# Sparse ResNets (models/resnetv2_sparse.py) and their tools/convert_pth.py
# --------------------------------------------------------------------------------------------

RESNETS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _me_conv(key: str, k: int, cin: int, cout: int) -> Entry:
    # MinkowskiConvolution(bias=False): kernel (k^D, C_in, C_out), but (C_in, C_out) when the kernel
    # volume is 1 (1x1, whatever the stride)
    return (key, (k * k, cin, cout) if k > 1 else (cin, cout), "me_kernel" if k > 1 else "me_kernel_1x1")


def authors_resnet_entries(depth: int) -> List[Entry]:
    """(key, shape, kind) of their ``SparseResNet`` encoder: a dense ``stem`` (Conv2d 4x4/4 with bias +
    channels-first LayerNorm), then ``layer1..4`` of sparse blocks (MinkowskiLayerNorm under ``.ln``);
    ``downsample`` = 1x1 conv (stride s) + MinkowskiLayerNorm where the shape changes."""
    block, layers = RESNETS[depth]
    exp = 4 if block == "bottleneck" else 1
    e: List[Entry] = [
        ("stem.0.weight", (64, 3, 4, 4), "conv_weight"),
        ("stem.0.bias", (64,), "bias"),
        ("stem.1.weight", (64,), "ln_weight"),
        ("stem.1.bias", (64,), "ln_bias"),
    ]
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
            if block == "basic":
                convs = [(3, cin, planes), (3, planes, planes)]
            else:
                convs = [(1, cin, planes), (3, planes, planes), (1, planes, planes * exp)]
            for c, (k, a, b) in enumerate(convs, 1):
                e.append(_me_conv(f"{p}.conv{c}.kernel", k, a, b))
                e += [(f"{p}.norm{c}.ln.weight", (b,), "ln_weight"), (f"{p}.norm{c}.ln.bias", (b,), "ln_bias")]
            if j == 0 and (stride != 1 or cin != planes * exp):
                e.append(_me_conv(f"{p}.downsample.0.kernel", 1, cin, planes * exp))
                e += [
                    (f"{p}.downsample.1.ln.weight", (planes * exp,), "ln_weight"),
                    (f"{p}.downsample.1.ln.bias", (planes * exp,), "ln_bias"),
                ]
            cin = planes * exp
    return e


def make_authors_resnet_state(depth: int, seed: int = 0, decoder_dim: int = 64) -> Dict:
    """A random raw pretraining checkpoint of their ResNet VideoMAC, laid out as ``save_model_distill``
    writes it (see :func:`make_authors_convnext_state`; the optimizer state is left empty). The decoder
    side (``mask_token``, ``proj``, ``decoder``, ``pred``) is small (``decoder_dim``): it is dropped anyway."""
    c_last = 512 * (4 if RESNETS[depth][0] == "bottleneck" else 1)
    d = decoder_dim
    entries = [("mask_token", (1, d, 1, 1), "mask_token")]
    entries += [("encoder." + k, s, kind) for k, s, kind in authors_resnet_entries(depth)]
    entries += [
        ("proj.weight", (d, c_last, 1, 1), "conv_weight"),
        ("proj.bias", (d,), "bias"),
        ("decoder.0.dwconv.weight", (d, 1, 7, 7), "conv_weight"),
        ("decoder.0.dwconv.bias", (d,), "bias"),
        ("pred.weight", (32 * 32 * 3, d, 1, 1), "conv_weight"),
        ("pred.bias", (32 * 32 * 3,), "bias"),
    ]
    g = torch.Generator().manual_seed(seed)
    online = OrderedDict(
        (k, _random_value(s, "me_kernel" if kind == "me_kernel_1x1" else kind, g)) for k, s, kind in entries
    )
    target = OrderedDict((k, v + 0.01 * v.abs().mean()) for k, v in online.items())
    return {
        "model_online": online,
        "model_target": target,
        "online_without_ddp": online,
        "target_without_ddp": target,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 99,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model=f"mac_r{depth}", mask_ratio=0.75),
    }


def authors_resnet_forward(state: Dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """Their ``SparseResNet.forward`` with nothing masked, densely, on their raw layout: stem conv + LN,
    then every sparse block (stride on conv1 for basic blocks, conv2 for bottlenecks; MinkowskiGELU
    = exact GELU after each norm but the last, and after the residual sum). An unmasked sparse conv is
    a dense conv with zero padding (odd k: offsets centred), a strided one keeps every s-th position."""
    sd = _encoder_state(state)
    block, layers = RESNETS[depth]

    def conv(t, key, stride=1):
        k = sd[key]
        w = k.t()[:, :, None, None] if k.ndim == 2 else me_kernel_to_dense(k)  # (C_in, C_out): a 1x1 kernel
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    def ln(t, p):
        return _ln_channels_first(t, sd[f"{p}.ln.weight"], sd[f"{p}.ln.bias"])

    x = F.conv2d(x, sd["stem.0.weight"], sd["stem.0.bias"], stride=4)
    x = _ln_channels_first(x, sd["stem.1.weight"], sd["stem.1.bias"])
    for i, n in enumerate(layers):
        for j in range(n):
            p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
            res = x
            if f"{p}.downsample.0.kernel" in sd:
                res = ln(conv(x, f"{p}.downsample.0.kernel", stride), f"{p}.downsample.1")
            if block == "basic":
                y = F.gelu(ln(conv(x, f"{p}.conv1.kernel", stride), f"{p}.norm1"))
                y = ln(conv(y, f"{p}.conv2.kernel"), f"{p}.norm2")
            else:
                y = F.gelu(ln(conv(x, f"{p}.conv1.kernel"), f"{p}.norm1"))
                y = F.gelu(ln(conv(y, f"{p}.conv2.kernel", stride), f"{p}.norm2"))
                y = ln(conv(y, f"{p}.conv3.kernel"), f"{p}.norm3")
            x = F.gelu(y + res)
    return x


def _authors_remap(ckpt: Dict, r50: bool) -> Dict[str, torch.Tensor]:
    """tools/utils.py ``remap_checkpoint_keys`` (``r50=False``) / ``remap_checkpoint_keys_r50``, line by line."""
    new_ckpt = OrderedDict()
    for k, v in ckpt.items():
        if k.startswith("encoder"):
            k = ".".join(k.split(".")[1:])
        if k.endswith("kernel"):
            k = ".".join(k.split(".")[:-1])
            new_k = k + ".weight"
            if len(v.shape) == 3:
                kv, in_dim, out_dim = v.shape
                ks = int(math.sqrt(kv))
                new_ckpt[new_k] = v.permute(2, 1, 0).reshape(out_dim, in_dim, ks, ks).transpose(3, 2)
            elif len(v.shape) == 2:
                if r50:
                    v = v.unsqueeze(0)
                    kv, in_dim, out_dim = v.shape
                    ks = int(math.sqrt(kv))
                    new_ckpt[new_k] = v.permute(2, 1, 0).reshape(out_dim, in_dim, ks, ks).transpose(3, 2)
                else:
                    kv, dim = v.shape
                    ks = int(math.sqrt(kv))
                    new_ckpt[new_k] = v.permute(1, 0).reshape(dim, 1, ks, ks).transpose(3, 2)
            continue
        elif "ln" in k or "linear" in k:
            k = k.split(".")
            k.pop(-2)
            new_k = ".".join(k)
        else:
            new_k = k
        new_ckpt[new_k] = v
    for k, v in new_ckpt.items():
        if k.endswith("bias") and len(v.shape) != 1:
            new_ckpt[k] = v.reshape(-1)
        elif "grn" in k:
            new_ckpt[k] = v.unsqueeze(0).unsqueeze(1)
    return new_ckpt


def authors_convert_pth(ckpt: Dict) -> Dict[str, torch.Tensor]:
    """Their tools/convert_pth.py: ``online_without_ddp``, decoder-side keys removed (any key containing
    'decoder', 'mask_token', 'proj' or 'pred'), keys remapped, the ResNet remap when the first raises.
    This is the layout of the released ``mac-*.pth`` files (their default output name is ``mac-small.pth``)."""
    model = dict(ckpt["online_without_ddp"])
    for k in list(model):
        if "decoder" in k or "mask_token" in k or "proj" in k or "pred" in k:
            del model[k]
    try:
        return _authors_remap(model, r50=False)
    except RuntimeError:
        return _authors_remap(model, r50=True)
