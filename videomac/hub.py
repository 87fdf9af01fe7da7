"""Weights in and out: verified downloads for ``pretrained=True``, safetensors export, model cards,
Hugging Face Hub push, and the torch.hub entry points. Downloads go through huggingface_hub (its
cache, ``HF_HUB_OFFLINE=1`` and revisions apply); loading goes through timm."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Callable, Dict, Optional

import torch

from videomac.registry import WeightEntry, find_entry, registry_path

__all__ = [
    "WeightsNotPublishedError",
    "sha256_file",
    "fetch_weights",
    "resolve_pretrained",
    "encoder_from_checkpoint",
    "export_folder",
    "push",
    "model_card",
    "hub_entrypoints",
]


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
    from videomac.pretrain.train import PRESETS

    preset = next((k for k, v in PRESETS.items() if v["model"] == variant), None)
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
    if cfg.file or cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir") or cfg.url:
        return kwargs
    entry = find_entry(variant, tag=cfg.tag)
    if entry is None or not entry.published:
        raise _not_published(variant, cfg.tag)
    overlay["file"] = fetch_weights(entry)
    return dict(kwargs, pretrained_cfg_overlay=overlay)


def encoder_from_checkpoint(path: str) -> torch.nn.Module:
    """The dense online encoder (a timm model) of a ``videomac pretrain`` checkpoint or run folder."""
    import timm

    from videomac.pretrain.train import load_checkpoint

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


def model_card(model: torch.nn.Module, repo_id: Optional[str], config: Optional[Dict] = None,
               entry: Optional[WeightEntry] = None) -> str:  # fmt: skip
    """A README.md model card: what it is, recipe, data, metrics, usage, citation, license."""
    name = model.pretrained_cfg["architecture"]
    cfg = config or {}
    params = sum(p.numel() for p in model.parameters()) / 1e6
    load = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    license_ = entry.license if entry else "apache-2.0"
    data = entry.data if entry else (cfg.get("data") or "the built-in procedural videos")
    rows = ""
    if entry and entry.metrics:
        rows = "\n".join(f"| {k} | {v} |" for k, v in entry.metrics.items())
        rows = f"\n## Results\n\n| benchmark | score |\n| --- | ---: |\n{rows}\n"
        if entry.metrics_source == "paper":
            rows += "\nThese are the paper's Table 1 figures for this backbone and recipe.\n"
    recipe = "\n".join(
        f"| {k} | {cfg[k]} |"
        for k in ("model", "input_size", "mask_ratio", "gap", "gamma", "norm_pix_loss", "epochs", "max_steps",
                  "blr", "lr", "weight_decay", "ema_base", "total_batch", "batch_size", "motion_weight")
        if k in cfg and cfg[k] is not None
    )  # fmt: skip
    recipe = f"\n## Pretraining recipe\n\n| setting | value |\n| --- | --- |\n{recipe}\n" if recipe else ""
    return f"""---
library_name: timm
license: {license_}
tags:
- image-feature-extraction
- timm
- videomac
- self-supervised
---
# {repo_id or name}

A {name} encoder ({params:.1f}M parameters, {model.num_features} output channels, stride 32) pretrained
with VideoMAC (masked video modeling with sparse ConvNets, CVPR 2024) on {data}. It is a plain timm
backbone without a classifier, for video object segmentation, label propagation and fine-tuning.
{recipe}{rows}
## Usage

```python
import timm, videomac  # importing videomac registers the architecture with timm

model = timm.create_model('{load}', pretrained=True)                      # headless backbone
feats = timm.create_model('{load}', pretrained=True, features_only=True)  # 4 feature maps
clf = timm.create_model('{load}', pretrained=True, num_classes=10)        # add a classifier
```

Preprocessing: ImageNet mean/std, bicubic resize, 224×224 during pretraining.

## Citation

```bibtex
@inproceedings{{pei2024videomac,
  title={{VideoMAC: Video Masked Autoencoders Meet ConvNets}},
  author={{Pei, Gensheng and Chen, Tao and Jiang, Xiruo and Liu, Huafeng and Sun, Zeren and Yao, Yazhou}},
  booktitle={{CVPR}},
  year={{2024}}
}}
```

## License

{license_}
"""


def export_folder(source, out_dir: str, repo_id: Optional[str] = None, include_checkpoint: bool = False,
                  tag: Optional[str] = None) -> Dict:  # fmt: skip
    """Write a Hub-ready folder: ``model.safetensors`` (timm keys), timm's ``config.json``, a
    ``README.md`` model card, and optionally the full pretraining checkpoint.

    ``source`` is a checkpoint path, a run folder, or a dense timm model.
    """
    from timm.models import save_for_hf

    config = None
    if isinstance(source, torch.nn.Module):
        model = source
    else:
        model = encoder_from_checkpoint(source)
        config = model.videomac_config
    name = model.pretrained_cfg["architecture"]
    entry = find_entry(name, tag=tag) if tag else None
    os.makedirs(out_dir, exist_ok=True)
    model_config = dict(pretrained_cfg=dict(tag=tag)) if tag else None
    save_for_hf(model, out_dir, model_config=model_config, safe_serialization=True)
    for extra in ("pytorch_model.bin",):  # safetensors only: no pickle files in published repos
        if os.path.exists(os.path.join(out_dir, extra)):
            os.remove(os.path.join(out_dir, extra))
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(model, repo_id, config, entry))
    files = sorted(os.listdir(out_dir))
    if include_checkpoint:
        if isinstance(source, torch.nn.Module):
            raise ValueError("include_checkpoint needs a checkpoint or run folder as source")
        ck = source if os.path.isfile(source) else os.path.join(source, "checkpoint.pt")
        shutil.copyfile(ck, os.path.join(out_dir, "checkpoint.pt"))
        files = sorted(os.listdir(out_dir))
    weights = os.path.join(out_dir, "model.safetensors")
    summary = dict(folder=out_dir, architecture=name, files=files, sha256=sha256_file(weights))
    with open(os.path.join(out_dir, "config.json")) as f:
        summary["config"] = json.load(f)
    return summary


def push(source, repo_id: str, dry_run: bool = False, include_checkpoint: bool = False, folder: Optional[str] = None,
         private: bool = False, revision: Optional[str] = None, token: Optional[str] = None,
         tag: Optional[str] = None) -> Dict:  # fmt: skip
    """Build the repo folder (see :func:`export_folder`) and upload it with huggingface_hub."""
    if "/" not in repo_id:
        raise ValueError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    if folder is None:
        base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        folder = os.path.join(base, "hub", repo_id.replace("/", "--"))
    summary = export_folder(source, folder, repo_id, include_checkpoint, tag)
    summary["repo_id"] = repo_id
    if dry_run:
        summary["uploaded"] = False
        return summary
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision,
                               commit_message=f"Add {summary['architecture']} VideoMAC weights")  # fmt: skip
    summary.update(uploaded=True, commit=getattr(commit, "oid", None))
    return summary


def hub_entrypoints() -> Dict[str, Callable]:
    """One torch.hub entry point per registered videomac model, sharing timm's registry."""
    import timm

    import videomac  # noqa: F401  (registers the models)

    def make(name: str) -> Callable:
        def entry(pretrained: bool = False, **kwargs):
            return timm.create_model(name, pretrained=pretrained, **kwargs)

        entry.__name__ = entry.__qualname__ = name
        entry.__doc__ = (
            f"{name}: a VideoMAC encoder as a timm model. pretrained=True loads the registry's default "
            "weights (verified by sha256); kwargs go to timm.create_model (num_classes, features_only, ...)."
        )
        return entry

    return {name: make(name) for name in timm.list_models("videomac_*")}
