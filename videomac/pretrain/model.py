"""The VideoMAC pretrainer: online/target sparse encoders + decoders and the three losses."""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models.convnext import ConvNeXtBlock

from videomac.masking import check_images, check_mask, num_visible, patchify, random_mask
from videomac.models.encoder import SparseEncoder
from videomac.pretrain.init import INITS, init_authors_

__all__ = ["VideoMAC", "Branch", "Decoder", "masked_mse", "patch_mean_std", "patch_targets"]


def patch_mean_std(patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (variance + 1e-6, as MAE's norm_pix_loss) of ``(B, L, D)`` patches."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + 1.0e-6) ** 0.5


def patch_targets(frames: torch.Tensor, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """Per-patch pixel targets ``(B, L, P*P*3)``, normalized per patch (mean/var, eps 1e-6) if asked."""
    target = patchify(frames.float(), patch_size)
    if norm_pix_loss:
        mean, std = patch_mean_std(target)
        target = (target - mean) / std
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE averaged over each patch's values, then over the masked patches only."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    m = mask.flatten(1).to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


class Decoder(nn.Module):
    """1x1 proj to ``dim``, a learned mask token at masked cells, ConvNeXt-V2 blocks, 1x1 to P*P*C."""

    def __init__(self, in_dim: int, patch_size: int, dim: int = 512, depth: int = 1, out_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(dim, use_grn=True, ls_init_value=None, conv_mlp=False) for _ in range(depth)]
        )
        self.pred = nn.Conv2d(dim, patch_size * patch_size * out_chans, 1)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(feats)
        m = mask.unsqueeze(1).to(x.dtype)
        x = x * (1.0 - m) + self.mask_token.to(x.dtype) * m
        x = self.pred(self.blocks(x))
        return x.flatten(2).transpose(1, 2)  # (B, L, P*P*C), the layout of masking.patchify


class Branch(nn.Module):
    """Sparse encoder + decoder."""

    def __init__(self, encoder: nn.Module, decoder_dim: int = 512, decoder_depth: int = 1, backend: str = "auto"):
        super().__init__()
        self.encoder = SparseEncoder(encoder, backend=backend)
        self.decoder = Decoder(self.encoder.num_features, self.encoder.patch_size, decoder_dim, decoder_depth)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: Optional[int] = None) -> torch.Tensor:
        return self.decoder(self.encoder(x, mask, keep), mask)


class VideoMAC(nn.Module):
    """VideoMAC: frame 1 -> online branch, frame 2 -> EMA target branch, one symmetric mask.

    ``forward(frame1, frame2)`` returns a dict with ``loss`` = ``L_o + L_t + gamma * L_c``, its parts
    ``loss_online``, ``loss_target``, ``loss_consistency`` (and ``loss_motion`` when
    ``motion_weight > 0``), the predictions ``pred_online`` / ``pred_target`` ``(B, L, P*P*3)`` and
    the ``mask`` ``(B, h, w)``. ``backend`` selects the sparse execution of the encoders
    (see :class:`videomac.SparseEncoder`). ``init="timm"`` keeps timm's encoder init and a std-0.02
    decoder; ``"authors"`` applies the authors' rules (:mod:`videomac.pretrain.init`; the paper
    presets). The target starts as an exact copy of the online model either way.
    """

    def __init__(
        self,
        encoder: Union[str, nn.Module] = "videomac_cnxv2_s",
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        gamma: float = 1.0,
        norm_pix_loss: bool = True,
        motion_weight: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: str = "auto",
        init: str = "timm",
    ):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; available: {', '.join(INITS)}")
        if isinstance(encoder, str):
            self.encoder_name = encoder
            encoder = timm.create_model(encoder, num_classes=0, drop_path_rate=drop_path_rate)
        else:
            self.encoder_name = getattr(encoder, "pretrained_cfg", {}).get("architecture", type(encoder).__name__)
        self.mask_ratio = mask_ratio
        self.gamma = gamma
        self.norm_pix_loss = norm_pix_loss
        self.motion_weight = motion_weight
        self.online = Branch(encoder, decoder_dim, decoder_depth, backend)
        # Head layers (e.g. ConvNeXt's head.norm) are not used by forward_features: freeze them so
        # DDP does not wait for their gradients; export_encoder() makes them trainable again.
        for head in self.online.encoder.head_modules():
            head.requires_grad_(False)
        self.patch_size = self.online.encoder.patch_size
        # Motion (MAM2): a second decoder on the online features predicts per-patch frame2 - frame1.
        self.motion = None
        if motion_weight > 0:
            self.motion = Decoder(self.online.encoder.num_features, self.patch_size, decoder_dim, decoder_depth)
        if init == "authors":
            decoders = [self.online.decoder] + ([self.motion] if self.motion is not None else [])
            init_authors_(self.online.encoder.model, decoders)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()  # the EMA target never drops paths or updates BN statistics
        return self

    def make_mask(self, batch: int, grid, device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mask = random_mask(batch, grid, self.mask_ratio, generator=generator)
        return mask.to(device)

    def forward(
        self,
        frame1: torch.Tensor,
        frame2: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        keep: Optional[int] = None,
    ) -> Dict[str, torch.Tensor]:
        """``mask``: ``(B, h, w)`` bool, or None for a fresh :meth:`make_mask`. ``keep``: the visible cells of
        every sample of a given mask, when known (see :class:`videomac.SparseEncoder`); a fresh mask's is."""
        grid = check_images(frame1, self.patch_size)
        if frame2.shape != frame1.shape:
            raise ValueError(
                f"frame1 and frame2 must have the same shape, got {tuple(frame1.shape)} and {tuple(frame2.shape)}"
            )
        B = frame1.shape[0]
        if mask is None:
            mask, keep = self.make_mask(B, grid, frame1.device), num_visible(grid[0] * grid[1], self.mask_ratio)
        else:
            mask = check_mask(mask, B, grid).to(frame1.device)

        feats = self.online.encoder(frame1, mask, keep)
        pred_online = self.online.decoder(feats, mask)
        with torch.no_grad():
            pred_target = self.target(frame2, mask, keep)

        with torch.autocast(device_type=frame1.device.type, enabled=False):
            pred_online, pred_target = pred_online.float(), pred_target.float()
            loss_online = masked_mse(pred_online, patch_targets(frame1, self.patch_size, self.norm_pix_loss), mask)
            with torch.no_grad():
                loss_target = masked_mse(pred_target, patch_targets(frame2, self.patch_size, self.norm_pix_loss), mask)
            loss_consistency = masked_mse(pred_online, pred_target.detach(), mask)
            loss = loss_online + loss_target + self.gamma * loss_consistency
        out = dict(
            loss=loss,
            loss_online=loss_online,
            loss_target=loss_target,
            loss_consistency=loss_consistency,
            pred_online=pred_online,
            pred_target=pred_target,
            mask=mask,
        )
        if self.motion is not None:
            pred_motion = self.motion(feats, mask).float()
            motion_target = patchify((frame2 - frame1).float(), self.patch_size)
            loss_motion = masked_mse(pred_motion, motion_target, mask)
            out["loss_motion"] = loss_motion
            out["pred_motion"] = pred_motion
            out["loss"] = loss + self.motion_weight * loss_motion
        return out

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step: ``target = m * target + (1 - m) * online`` (buffers are copied)."""
        # multi-tensor kernels: one launch for all parameters instead of one per tensor (on a GPU the
        # per-tensor loop is hundreds of tiny kernels a step)
        torch._foreach_lerp_(list(self.target.parameters()), list(self.online.parameters()), 1.0 - momentum)
        buffers = list(self.target.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(self.online.buffers()))

    def export_encoder(self) -> nn.Module:
        """The dense timm encoder with the online weights."""
        return self.online.encoder.to_dense().requires_grad_(True)
