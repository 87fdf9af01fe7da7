"""Draw the figures of docs/method.md with the library itself (built-in synthetic videos, CPU).

    python docs/make_figures.py [--steps 150]     # about 15 minutes on two (shared) CPU cores

Writes docs/img/masking.png (a frame pair under one symmetric mask) and docs/img/reconstruction.png
(online and target reconstructions of a small encoder pretrained here for ``--steps`` steps).
"""

import argparse
import os
import shutil
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw

from videomac.masking import PATCH_SIZE, random_mask, upsample_mask
from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.train import pretrain
from videomac.synthetic import render_video

IMG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "img")


def masking_figure(path: str, size: int = 224, ratio: float = 0.75, seed: int = 5) -> None:
    """Frames t and t+gap, the one random mask, and both frames as the encoders see them."""
    frames, _ = render_video(seed, 6, (size, size), 3)
    f1, f2 = frames[0], frames[4]  # a wider gap than training's 1, so the motion is visible
    grid = (size // PATCH_SIZE, size // PATCH_SIZE)
    mask = random_mask(1, grid, ratio, generator=torch.Generator().manual_seed(seed))
    m = upsample_mask(mask, (size, size))[0].numpy()[..., None]
    grey = np.full_like(f1, 128)
    panels = [f1, f2, np.where(m, grey, f1), np.where(m, grey, f2)]
    titles = ["frame t", "frame t+gap", "online input (mask M)", "target input (same M)"]
    pad, head = 6, 18
    fig = Image.new("RGB", (pad + len(panels) * (size + pad), head + size + pad), "white")
    draw = ImageDraw.Draw(fig)
    for i, (p, t) in enumerate(zip(panels, titles)):
        x = pad + i * (size + pad)
        fig.paste(Image.fromarray(p), (x, head))
        draw.text((x + 2, 3), t, fill=(0, 0, 0))
        if i >= 2:  # the patch grid: one cell per encoder output position (stride 32)
            for k in range(0, size + 1, PATCH_SIZE):
                draw.line([(x + k, head), (x + k, head + size)], fill=(255, 255, 255))
                draw.line([(x, head + k), (x + size, head + k)], fill=(255, 255, 255))
    fig.save(path, optimize=True)


def reconstruction_figure(path: str, steps: int) -> None:
    """Pretrain videomac_cnxv2_atto briefly on the built-in videos; keep the run's reconstruction.png."""
    with tempfile.TemporaryDirectory() as run:
        cfg = PretrainConfig(
            model="videomac_cnxv2_atto",
            input_size=96,
            batch_size=16,
            decoder_dim=256,
            synthetic_videos=16,
            synthetic_frames=16,
            pairs_per_video=4,
            max_steps=steps,
            lr=3e-3,
            warmup_steps=max(1, steps // 10),
            ema_base=0.99,
            num_workers=0,
            output_dir=run,
            progress=False,
            log_every=steps,
        )
        pretrain(cfg)
        shutil.copy(os.path.join(run, "reconstruction.png"), path)
    Image.open(path).save(path, optimize=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150, help="pretraining steps for the reconstruction figure")
    p.add_argument("--only", choices=["masking", "reconstruction"], default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    os.makedirs(IMG, exist_ok=True)
    if args.only in (None, "masking"):
        masking_figure(os.path.join(IMG, "masking.png"))
    if args.only in (None, "reconstruction"):
        reconstruction_figure(os.path.join(IMG, "reconstruction.png"), args.steps)
    for name in sorted(os.listdir(IMG)):
        print(f"docs/img/{name}: {os.path.getsize(os.path.join(IMG, name)) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
