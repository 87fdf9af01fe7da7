"""Reconstruction figures for VideoMAC pretraining (like the paper's Fig. 8), drawn with PIL only.

One row per sample: frame 1, frame 2, the masked input, the online reconstruction (visible patches of
frame 1 + predicted masked patches) and the target reconstruction (visible patches of frame 2 +
predicted masked patches).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from videomac.files import atomic_file
from videomac.frames import FrameReader
from videomac.masking import PATCH_SIZE, check_images, check_mask, patchify, unpatchify, upsample_mask
from videomac.media import is_video
from videomac.pretrain.data import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_params
from videomac.pretrain.decode import crop_box, crop_resize
from videomac.pretrain.model import patch_mean_std

__all__ = [
    "COLUMN_TITLES",
    "reconstruction_panels",
    "reconstruction_figure",
    "save_reconstruction_figure",
    "visualize_checkpoint",
]

COLUMN_TITLES = ("frame 1", "frame 2", "masked input", "online recon", "target recon")
_PAD = 4
_HEADER = 16
_GREY = 0.5


def _unnormalize_pred(pred: torch.Tensor, frame: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Undo the per-patch normalization of ``norm_pix_loss`` with the true patches' stats (as in MAE)."""
    mean, std = patch_mean_std(patchify(frame, patch_size))
    return pred * std + mean


def reconstruction_panels(
    frame1: torch.Tensor,
    frame2: torch.Tensor,
    mask: torch.Tensor,
    pred_online: torch.Tensor,
    pred_target: torch.Tensor,
    patch_size: int = PATCH_SIZE,
    norm_pix_loss: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_rows: int = 4,
) -> np.ndarray:
    """The figure's cells as uint8 ``(rows, 5, H, W, 3)``, columns in :data:`COLUMN_TITLES` order.

    ``frame1``/``frame2``: normalized ``(B, 3, H, W)``; ``mask``: bool ``(B, h, w)``, True = masked;
    predictions: ``(B, h*w, P*P*3)`` in :func:`videomac.masking.patchify` layout.
    """
    grid = check_images(frame1, patch_size)
    if frame2.shape != frame1.shape:
        raise ValueError(f"frame2 shape {tuple(frame2.shape)} != frame1 shape {tuple(frame1.shape)}")
    B, _, H, W = frame1.shape
    mask = check_mask(mask, B, grid)
    expected = (B, grid[0] * grid[1], patch_size * patch_size * 3)
    for name, p in (("pred_online", pred_online), ("pred_target", pred_target)):
        if tuple(p.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(p.shape)}")
    n = max(1, min(B, int(max_rows)))
    f1, f2 = frame1[:n].detach().float().cpu(), frame2[:n].detach().float().cpu()
    po, pt = pred_online[:n].detach().float().cpu(), pred_target[:n].detach().float().cpu()
    m = upsample_mask(mask[:n].cpu(), (H, W)).unsqueeze(1)  # (n, 1, H, W)
    if norm_pix_loss:
        po, pt = _unnormalize_pred(po, f1, patch_size), _unnormalize_pred(pt, f2, patch_size)
    rec1 = torch.where(m, unpatchify(po, grid, patch_size), f1)
    rec2 = torch.where(m, unpatchify(pt, grid, patch_size), f2)
    mu = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    px = [x * sd + mu for x in (f1, f2)]
    masked = torch.where(m, torch.full_like(px[0], _GREY), px[0])
    cols = [px[0], px[1], masked, rec1 * sd + mu, rec2 * sd + mu]
    out = torch.stack(cols, dim=1).clamp(0, 1).mul(255).round().to(torch.uint8)
    return out.permute(0, 1, 3, 4, 2).numpy()


def reconstruction_figure(
    frame1: torch.Tensor,
    frame2: torch.Tensor,
    mask: torch.Tensor,
    pred_online: torch.Tensor,
    pred_target: torch.Tensor,
    patch_size: int = PATCH_SIZE,
    norm_pix_loss: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_rows: int = 4,
) -> Image.Image:
    """A grid image of :func:`reconstruction_panels` under a header of column titles.

    Cell ``(r, c)`` has its top-left corner at ``(PAD + c*(W+PAD), HEADER + PAD + r*(H+PAD))``.
    """
    panels = reconstruction_panels(
        frame1, frame2, mask, pred_online, pred_target, patch_size, norm_pix_loss, mean, std, max_rows
    )
    rows, ncol, H, W = panels.shape[:4]
    # Norm-pix targets carry no patch mean or contrast: say how the predictions are shown, so that flat
    # patches early in training are not read as "nothing learned".
    caption = (
        "norm-pix targets: predictions shown re-scaled with each patch's true mean and std"
        if norm_pix_loss
        else "predictions shown as predicted (pixel targets)"
    )
    fig = Image.new("RGB", (_PAD + ncol * (W + _PAD), _HEADER + _PAD + rows * (H + _PAD) + _HEADER), "white")
    draw = ImageDraw.Draw(fig)
    draw.text((_PAD + 2, _HEADER + _PAD + rows * (H + _PAD)), caption[: max(1, fig.width // 6)], fill=(60, 60, 60))
    for c, title in enumerate(COLUMN_TITLES):
        draw.text((_PAD + c * (W + _PAD) + 2, 2), title[: max(1, W // 6)], fill=(0, 0, 0))
    for r in range(rows):
        for c in range(ncol):
            fig.paste(Image.fromarray(panels[r, c]), (_PAD + c * (W + _PAD), _HEADER + _PAD + r * (H + _PAD)))
    return fig


def save_reconstruction_figure(path: str, *args, **kwargs) -> Image.Image:
    """Render :func:`reconstruction_figure` (same arguments) and save it as a PNG at ``path``, atomically
    (a symlink at ``path`` is replaced, not written through)."""
    fig = reconstruction_figure(*args, **kwargs)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.save(tmp, format="PNG")
    return fig


def _video_pairs(path: str, rows: int, gap: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``rows`` random pairs of frames ``gap`` apart of a video file, drawn among the frames that decode
    (a corrupt middle loses its own frames, not the figure). Frames are placed by timestamp when the
    stream has them, else in decoding order."""
    decoded: List[Optional[int]] = []
    try:
        reader = FrameReader(path, first_must_decode=False)
        every = reader.decode_packets(lambda f: decoded.append(f.pts))
    except ValueError:  # the reader's own message names the file
        raise
    except Exception as e:  # PyAV raises many error types for a file it cannot open
        raise ValueError(f"cannot read video {path}: {e}") from None
    stamped = None not in every and None not in decoded
    order = {p: k for k, p in enumerate(sorted(every))} if stamped else {}
    good = sorted({order[p] for p in decoded if p in order}) if stamped else list(range(len(decoded)))
    total = len(every) if stamped else len(decoded)
    have = set(good)
    starts = [t for t in good if t + gap in have]
    if not starts:
        raise ValueError(
            f"{path}: {len(good)} of {total} frames decode and no two of them are {gap} (the run's gap) apart: "
            "no frame pair to show"
        )
    if len(good) < total:
        warnings.warn(f"{path}: {len(good)} of {total} frames decode; the figure is made from those", stacklevel=3)
    chosen = [starts[int(i)] for i in torch.randint(0, len(starts), (rows,))]
    keep = set(chosen) | {t + gap for t in chosen}
    frames: Dict[int, np.ndarray] = {}
    seen = [0]

    def take(f) -> None:
        k = order.get(f.pts) if stamped else seen[0]
        seen[0] += 1
        if k in keep:
            frames[k] = f.to_ndarray(format="rgb24")

    reader.decode_packets(take)
    pairs = [(frames[t], frames[t + gap]) for t in chosen if t in frames and t + gap in frames]
    if not pairs:  # the second decode lost what the first found (a file changing under us)
        raise ValueError(f"{path}: the frames chosen for the figure no longer decode")
    return pairs


def _crop_pair(a: np.ndarray, b: np.ndarray, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One random resized crop and flip for both frames, as pretraining draws them; uint8 ``(3, s, s)``."""
    H, W = a.shape[:2]
    box = crop_box(random_resized_crop_params(H, W, (0.2, 1.0), (3 / 4, 4 / 3)), (H, W), (H, W))
    flip = bool(torch.rand(1).item() < 0.5)
    return tuple(torch.from_numpy(crop_resize(x, box, (size, size), flip).copy()).permute(2, 0, 1) for x in (a, b))


def visualize_checkpoint(
    checkpoint: str, video: str, out: str, rows: int = 4, input_size=None, seed: int = 0, trust_pickle: bool = False
) -> str:
    """Reconstruction figure of ``rows`` random frame pairs of ``video`` under a checkpoint's model
    (loaded weights-only unless ``trust_pickle``)."""
    from videomac.pretrain.checkpoint import load_pretrainer
    from videomac.pretrain.data import FramePairDataset, normalize_frames

    if int(rows) < 1:
        raise ValueError(f"--rows must be at least 1, got {rows}")
    model, cfg = load_pretrainer(checkpoint, trust_pickle=trust_pickle)
    model.eval()
    size = input_size or cfg.input_size
    torch.manual_seed(seed)
    if os.path.isfile(video) and is_video(video):
        pairs = [_crop_pair(a, b, size) for a, b in _video_pairs(video, rows, cfg.gap)]
    else:  # frame folders: the dataset skips unreadable images, and no pair spans one
        data = FramePairDataset(video, input_size=size, gap=cfg.gap, pairs_per_video=rows)
        pairs = [data[i] for i in range(rows)]
    frame1 = normalize_frames(torch.stack([p[0] for p in pairs]))  # uint8 -> normalised float
    frame2 = normalize_frames(torch.stack([p[1] for p in pairs]))
    with torch.no_grad():
        result = model(frame1, frame2)
    save_reconstruction_figure(
        out,
        frame1,
        frame2,
        result["mask"],
        result["pred_online"],
        result["pred_target"],
        patch_size=model.patch_size,
        norm_pix_loss=cfg.norm_pix_loss,
        max_rows=rows,
    )
    return out
