"""Weights for ``pretrained=True``: find a registry entry's file through huggingface_hub (its cache,
``HF_HUB_OFFLINE=1`` and revisions apply) and verify its sha256. Loading itself is timm's."""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional

from videomac.presets import preset_for_model
from videomac.registry import WeightEntry, find_entry, registry_path

__all__ = ["WeightsNotPublishedError", "sha256_file", "fetch_weights", "resolve_pretrained"]


class WeightsNotPublishedError(RuntimeError):
    """``pretrained=True`` for a model or tag that has no published weights."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_weights(entry: WeightEntry) -> str:
    """Download (or find in the Hugging Face cache) a registry entry's file and check its sha256."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(entry.hf_hub_id, entry.filename, revision=entry.revision)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ValueError(
            f"sha256 mismatch for {entry.name} ({entry.hf_hub_id}/{entry.filename}, file {path}): "
            f"the registry expects {entry.sha256}, the file has {digest}"
        )
    return path


def _not_published(variant: str, tag: Optional[str]) -> WeightsNotPublishedError:
    preset = preset_for_model(variant)
    recipe = f"--preset {preset}" if preset else f"--model {variant}"
    what = f"{variant}.{tag}" if tag else variant
    return WeightsNotPublishedError(
        f"{what} has no published weights yet (registry: {registry_path()}). Train your own and load them:\n"
        f"  videomac pretrain {recipe} --data /path/to/videos --output-dir runs/{variant}\n"
        f"  timm.create_model('{variant}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='runs/{variant}/encoder.safetensors'))"
    )


def resolve_pretrained(variant: str, pretrained: bool, kwargs: Dict) -> Dict:
    """Called by the model entry points: for registry weights, fetch and verify the file and point
    timm at it; the user's own file, state_dict or ``hf-hub:`` repo is left to timm; no weights at
    all is an error, never a silent random init."""
    if not pretrained:
        return kwargs
    from timm.models import resolve_pretrained_cfg

    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay)
    if cfg.file and cfg.source != "local-dir" and not os.path.isfile(cfg.file):
        raise FileNotFoundError(
            f"pretrained_cfg_overlay file {cfg.file!r} does not exist; pass the encoder.safetensors a run wrote "
            f"(videomac pretrain --model {variant} --output-dir runs/X writes runs/X/encoder.safetensors)"
        )
    if cfg.file or cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir") or cfg.url:
        return kwargs
    entry = find_entry(variant, tag=cfg.tag)
    if entry is None or not entry.published:
        raise _not_published(variant, cfg.tag)
    overlay["file"] = fetch_weights(entry)
    return dict(kwargs, pretrained_cfg_overlay=overlay)
