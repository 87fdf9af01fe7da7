"""Symmetric frame-pair masks on the encoder's patch grid, and patchify/unpatchify.

A mask is a bool tensor ``(B, h, w)`` over the grid of ``P x P`` patches (``P`` = the encoder's
total stride, 32), ``True`` = masked. One mask serves both frames of a pair.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

PATCH_SIZE = 32

__all__ = [
    "PATCH_SIZE",
    "random_mask",
    "num_visible",
    "check_visible",
    "grid_size",
    "check_images",
    "check_mask",
    "upsample_mask",
    "patchify",
    "unpatchify",
    "mask_to_image",
]


def num_visible(num_patches: int, ratio: float) -> int:
    """Patches kept per sample: ``int(L * (1 - ratio))``, as in the paper's code."""
    return int(num_patches * (1 - ratio))


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")


def check_visible(grid_hw: Sequence[int], ratio: float, patch_size: int = PATCH_SIZE) -> int:
    """The visible cells per sample of ``ratio`` on a ``(h, w)`` grid; ``ValueError`` if none is left.

    With no visible cell the encoder sees nothing and gets no gradient, so such settings are refused
    rather than trained on (e.g. ratio 0.9 on the 2x2 grid of a 64-pixel input keeps int(4 * 0.1) = 0).
    """
    _check_ratio(ratio)
    h, w = int(grid_hw[0]), int(grid_hw[1])
    keep = num_visible(h * w, ratio)
    if keep < 1:
        top = 1 - 1 / (h * w)
        raise ValueError(
            f"mask ratio {ratio} on a {h}x{w} grid of {patch_size}-pixel patches (input {h * patch_size}x"
            f"{w * patch_size}) keeps int({h * w} * (1 - {ratio})) = 0 visible patches per sample: the encoder "
            f"would see nothing. Use a mask ratio <= {top:.4g} or a larger input size"
        )
    return keep


def random_mask(
    batch: int,
    grid_hw: Sequence[int],
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Per-sample uniform random mask keeping exactly ``int(h*w*(1-ratio))`` cells.

    Returns a bool tensor ``(batch, h, w)``; ``True`` marks a masked cell.
    """
    _check_ratio(ratio)
    if len(grid_hw) != 2 or min(grid_hw) < 1:
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {tuple(grid_hw)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    num = h * w
    keep = check_visible((h, w), ratio)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(batch, num, generator=generator, device=gen_device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    mask = ranks >= keep
    return mask.view(batch, h, w).to(device if device is not None else gen_device)


def grid_size(image_hw: Sequence[int], patch_size: int = PATCH_SIZE) -> Tuple[int, int]:
    """The patch grid ``(h, w)`` of an image; both sides must be multiples of ``patch_size``."""
    H, W = int(image_hw[0]), int(image_hw[1])
    if H % patch_size or W % patch_size or H < patch_size or W < patch_size:
        raise ValueError(f"image size {H}x{W} must be a positive multiple of the patch size {patch_size} on both sides")
    return H // patch_size, W // patch_size


def check_images(x: torch.Tensor, patch_size: int = PATCH_SIZE, channels: int = 3) -> Tuple[int, int]:
    """Validate a ``(B, C, H, W)`` image batch; returns its patch grid."""
    if not torch.is_tensor(x) or x.ndim != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected images of shape (B, {channels}, H, W), got {shape}")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {x.shape[1]} (images of shape {tuple(x.shape)})")
    return grid_size(x.shape[-2:], patch_size)


def check_mask(mask: torch.Tensor, batch: int, grid_hw: Sequence[int]) -> torch.Tensor:
    """Validate a bool mask against a batch and patch grid; returns it.

    Bool masks (and integer ones holding only 0 and 1) are accepted; a float mask is refused with
    ``TypeError``: casting it (a soft mask, or 0.5 meant as "half") would silently mask every non-zero cell.
    """
    expected = (batch, int(grid_hw[0]), int(grid_hw[1]))
    if not torch.is_tensor(mask) or tuple(mask.shape) != expected:
        got = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must have shape (B, h, w) = {expected} for these images, got {got}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be a bool tensor (True = masked), got {mask.dtype}; pass e.g. mask > 0.5")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"an integer mask must hold only 0 and 1 (1 = masked), got {mask.unique()[:8].tolist()}")
    return mask.bool()


def upsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-resize a ``(B, h, w)`` grid mask to ``size``, a multiple of the grid on both sides."""
    h, w = mask.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if H % h or W % w:
        raise ValueError(f"resolution {H}x{W} is not a multiple of the mask grid {h}x{w}")
    return mask.repeat_interleave(H // h, dim=-2).repeat_interleave(W // w, dim=-1)


def patchify(imgs: torch.Tensor, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, h*w, P*P*C)``, each row one patch in (row, col, channel) order."""
    B, C = imgs.shape[:2]
    h, w = grid_size(imgs.shape[-2:], patch_size)
    p = patch_size
    x = imgs.reshape(B, C, h, p, w, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, grid_hw: Sequence[int], patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, h*w, P*P*C)`` -> ``(B, C, h*P, w*P)``."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    B, L, D = x.shape
    p = patch_size
    if L != h * w or D % (p * p):
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} onto a {h}x{w} grid of {p}x{p} patches")
    C = D // (p * p)
    x = x.reshape(B, h, w, p, p, C)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, h * p, w * p)


def mask_to_image(mask: torch.Tensor, image_hw: Sequence[int]) -> torch.Tensor:
    """A ``(B, 1, H, W)`` float image of the mask (1 = masked), for figures and loss maps."""
    return upsample_mask(mask, image_hw).unsqueeze(1).float()
