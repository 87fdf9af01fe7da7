"""Train a small FPN segmentation head on a VideoMAC backbone (``features_only=True``).

    python examples/segmentation_head.py --data /path/to/seg --model videomac_rn50 \
        --weights runs/rn50/encoder.safetensors --epochs 50 --img-size 256

``--data`` holds ``images/<name>.jpg|png`` and ``masks/<name>.png`` (class ids as pixel values, e.g.
DAVIS-style palette PNGs; 255 = ignore). Every 4th image (sorted by name) is held out for validation.
Prints one line per epoch (loss, val mIoU) and writes the validation predictions as palette PNGs to
``<out>/pred/``.
"""

import argparse
import os

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import videomac  # noqa: F401  (registers the videomac_* encoders with timm)
from videomac.eval.datasets import read_image, read_label_png, write_label_png
from videomac.eval.metrics import confusion_matrix, miou_from_confusion


class FPNHead(nn.Module):
    """Feature-pyramid head: 1x1 laterals, top-down sum, 3x3 smoothing, per-pixel classes at stride 4."""

    def __init__(self, in_channels, num_classes, dim=128):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8, dim), nn.GELU())
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats):
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.smooth(x))


class Segmenter(nn.Module):
    def __init__(self, model_name, num_classes, weights=None):
        super().__init__()
        kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)) if weights else {}
        # features_only: timm returns the four stage outputs (strides 4, 8, 16, 32), no head.
        self.backbone = timm.create_model(model_name, features_only=True, **kwargs)
        self.head = FPNHead(self.backbone.feature_info.channels(), num_classes)

    def forward(self, x):
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_split(root, size):
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, "masks")) if n.endswith(".png"))
    images = {os.path.splitext(n)[0]: n for n in os.listdir(os.path.join(root, "images"))}
    xs, ys = [], []
    for n in names:
        img = Image.fromarray(read_image(os.path.join(root, "images", images[n]))).resize((size, size), Image.BILINEAR)
        lab = Image.fromarray(read_label_png(os.path.join(root, "masks", n + ".png"))).resize(
            (size, size), Image.NEAREST
        )
        xs.append(np.asarray(img))
        ys.append(np.asarray(lab))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # ImageNet, as pretraining
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    y = torch.from_numpy(np.stack(ys)).long()
    val = torch.arange(len(names)) % 4 == 3
    return (x[~val], y[~val]), (x[val], y[val]), [n for n, v in zip(names, val) if v]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="videomac_cnxv2_atto")
    p.add_argument("--weights", default=None, help="encoder.safetensors from `videomac pretrain`")
    p.add_argument("--num-classes", type=int, default=None, help="default: largest id in the masks + 1")
    p.add_argument("--img-size", type=int, default=256, help="square training size (a multiple of 32)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-scale", type=float, default=0.1, help="the pretrained body learns slower")
    p.add_argument("--out", default="runs/segmentation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    (xt, yt), (xv, yv), val_names = load_split(args.data, args.img_size)
    labelled = torch.cat([yt, yv])
    num_classes = args.num_classes or int(labelled[labelled != 255].max()) + 1
    model = Segmenter(args.model, num_classes, args.weights).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters(), "lr": args.lr * args.backbone_lr_scale},
            {"params": model.head.parameters(), "lr": args.lr},
        ],
        weight_decay=0.05,
    )
    steps = args.epochs * max(1, len(xt) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=0.1
    )
    print(
        f"{len(xt)} train / {len(xv)} val images, {num_classes} classes, backbone {args.model} "
        f"(channels {model.backbone.feature_info.channels()}), weights: {args.weights or 'random init'}"
    )

    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        losses = []
        for s in range(0, len(xt) - args.batch_size + 1 if len(xt) >= args.batch_size else 1, args.batch_size):
            idx = perm[s : s + args.batch_size]
            x, y = xt[idx].to(device), yt[idx].to(device)
            if torch.rand(()) < 0.5:  # horizontal flip, applied to image and mask alike
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            losses.append(loss.item())
        miou, preds = evaluate(model, xv, yv, num_classes, device)
        print(f"epoch {epoch + 1}/{args.epochs} train_loss {np.mean(losses):.4f} val_mIoU {miou:.4f}", flush=True)

    for name, pred in zip(val_names, preds):
        write_label_png(pred, os.path.join(args.out, "pred", f"{name}.png"))
    print(f"wrote {len(val_names)} predictions to {os.path.join(args.out, 'pred')}")


@torch.no_grad()
def evaluate(model, x, y, num_classes, device):
    model.eval()
    preds = torch.cat([model(x[s : s + 8].to(device)).argmax(1).cpu() for s in range(0, len(x), 8)])
    conf = confusion_matrix(y.numpy(), preds.numpy(), num_classes)  # skips 255 (ignore) pixels
    return miou_from_confusion(conf)[0], preds.numpy().astype(np.uint8)


if __name__ == "__main__":
    main()
