"""Reading and writing pretraining runs: atomic checkpoint and encoder files, and the models they hold.

Used by the training loop and by publishing (export, push, visualize), so neither reaches into the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Dict, Iterator, Tuple

import torch

from videomac.pretrain.config import CHECKPOINT, PretrainConfig
from videomac.pretrain.model import VideoMAC

__all__ = [
    "atomic_file", "atomic_save", "save_encoder", "load_checkpoint", "build_model", "load_pretrainer",
    "encoder_from_checkpoint",
]  # fmt: skip


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; once written it is fsynced and renamed over ``path``,
    so a crash leaves either the old file or the new one, never a partial one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def save_encoder(model: VideoMAC, path: str) -> None:
    """The dense online encoder as safetensors with timm key names (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.export_encoder().state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, tmp, metadata={"architecture": model.encoder_name, "format": "pt"})


def load_checkpoint(path: str, map_location="cpu") -> Dict:
    """A pretraining checkpoint (``path`` may be the run folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def build_model(cfg: PretrainConfig) -> VideoMAC:
    return VideoMAC(
        cfg.model,
        mask_ratio=cfg.mask_ratio,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        gamma=cfg.gamma,
        norm_pix_loss=cfg.norm_pix_loss,
        motion_weight=cfg.motion_weight,
        drop_path_rate=cfg.drop_path,
        backend=cfg.backend,
        init=cfg.init,
    )


def load_pretrainer(path: str, map_location="cpu") -> Tuple[VideoMAC, PretrainConfig]:
    """The VideoMAC module (online and target) and config of a pretraining checkpoint."""
    ck = load_checkpoint(path, map_location)
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in ck["config"].items() if k in names})
    model = build_model(cfg)
    model.load_state_dict(ck["model"])
    return model, cfg


def encoder_from_checkpoint(path: str) -> torch.nn.Module:
    """The dense online encoder (a timm model) of a ``videomac pretrain`` checkpoint or run folder."""
    import timm

    ck = load_checkpoint(path)
    prefix = "online.encoder.model."
    state = {k[len(prefix) :]: v for k, v in ck["model"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no online encoder weights (keys {prefix}*)")
    model = timm.create_model(ck["config"]["model"])
    model.load_state_dict(state, strict=True)
    model.videomac_config = ck["config"]
    model.videomac_step = ck.get("step")
    return model
