"""Fine-tune a VideoMAC backbone for image classification with timm's own pieces.

    python examples/finetune_classification.py --data /path/to/imagefolder \
        --model videomac_cnxv2_s --weights runs/cnxv2s/encoder.safetensors --epochs 30 --img-size 224

``--data`` is an ImageFolder: ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``. The recipe is the usual
one for masked-image-model backbones: AdamW, layer-wise lr decay (earlier layers learn slower; timm
groups layers with the model's ``group_matcher``), warm-up then cosine, RandAugment-free light
augmentation. Prints one line per epoch and writes ``<out>/model.safetensors``.
"""

import argparse
import os
import time

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torchvision.datasets import ImageFolder

import videomac  # noqa: F401  (registers the videomac_* encoders with timm)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--model", default="videomac_cnxv2_atto")
    p.add_argument("--weights", default=None, help="encoder.safetensors from `videomac pretrain` (else random init)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=0.75, help="lr scale per layer group, from the head down")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_set = ImageFolder(os.path.join(args.data, "train"))
    val_set = ImageFolder(os.path.join(args.data, "val"))
    num_classes = len(train_set.classes)

    # A pretrained encoder is loaded by timm itself: the file replaces the (unpublished) hub weights,
    # and timm leaves the new classifier head randomly initialised because num_classes differs.
    kwargs = dict(num_classes=num_classes, drop_path_rate=args.drop_path)
    if args.weights:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.weights))
    model = timm.create_model(args.model, **kwargs).to(device)
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{num_classes} classes, weights: {args.weights or 'random init'}"
    )

    # timm's transforms with the model's mean/std; no colour jitter (the encoder never saw it).
    data_cfg = resolve_data_config({"input_size": (3, args.img_size, args.img_size)}, model=model)
    train_set.transform = create_transform(**data_cfg, is_training=True, color_jitter=None)
    val_set.transform = create_transform(**data_cfg, is_training=False)
    loader = torch.utils.data.DataLoader(
        train_set, args.batch_size, shuffle=True, drop_last=len(train_set) > args.batch_size, num_workers=args.workers
    )
    val_loader = torch.utils.data.DataLoader(val_set, args.batch_size, num_workers=args.workers)

    # Layer-wise lr decay: timm splits the model into groups with model.group_matcher() (stem, each
    # block, head) and scales each group's lr by layer_decay ** (distance from the head).
    optimizer = create_optimizer_v2(
        model, "adamw", lr=args.lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay
    )
    # Stepped every iteration (step_on_epochs=False) so short runs still warm up smoothly.
    scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        warmup_lr=args.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )

    step = 0
    for epoch in range(num_epochs):
        model.train()
        t0, total, n = time.time(), 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            total, n = total + loss.item() * len(y), n + len(y)
        acc = evaluate(model, val_loader, device)
        print(
            f"epoch {epoch + 1}/{num_epochs} train_loss {total / n:.4f} val_acc {acc:.4f} "
            f"lr {optimizer.param_groups[-1]['lr']:.2e} ({time.time() - t0:.1f}s)",
            flush=True,
        )

    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, "model.safetensors"))
    print(f"saved {os.path.join(args.out, 'model.safetensors')}")


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


if __name__ == "__main__":
    main()
