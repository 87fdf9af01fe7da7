"""Publishing: a run's encoder as a Hub-ready folder (safetensors, timm config, model card), the
Hugging Face Hub push, and the torch.hub entry points. Downloads for ``pretrained=True`` are
:mod:`videomac.pretrained` (below the models); reading runs is :mod:`videomac.pretrain.checkpoint`."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from typing import Callable, Dict, List, Optional

import torch

from videomac.files import atomic_file
from videomac.pretrain.checkpoint import encoder_from_checkpoint, load_checkpoint
from videomac.pretrain.config import CHECKPOINT
from videomac.pretrained import WeightsNotPublishedError, sha256_file
from videomac.registry import WeightEntry, find_entry

__all__ = [
    "export_folder",
    "push",
    "upload_list",
    "check_repo_id",
    "PUBLISHED_FILES",
    "model_card",
    "hub_entrypoints",
    "WeightsNotPublishedError",
    "sha256_file",
]


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# inline markup only: values sit mid-line (newlines are folded), so line-start markers (# - 1.) cannot act
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _yaml(value) -> str:
    """A YAML scalar that cannot open a new key or document: a JSON string is a YAML double-quoted string."""
    return json.dumps(str(value))


def _md(value) -> str:
    """``value`` as inert markdown text: one line, HTML escaped, markdown punctuation backslash-escaped."""
    text = " ".join(str(value).split())  # newlines could start headings, lists or a new front matter
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def _public(value) -> str:
    """A user's setting as it may appear in a public card: paths reduced to their last component, so no
    local directory layout (home folders, user names) is published."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_public(v) for v in value)
    text = str(value)
    if os.sep in text or (os.altsep and os.altsep in text) or text.startswith("~"):
        text = os.path.basename(os.path.normpath(os.path.expanduser(text))) or "a local folder"
    return text


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a Hub ``ORG/NAME`` (letters, digits, ``_ . -``), else ``ValueError``."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"--repo-id must look like ORG/NAME (letters, digits, '_', '.', '-'), got {repo_id!r}")
    return repo_id


def _epochs_done(progress: Dict, accum_iter: int) -> Optional[float]:
    """Epochs of the data a checkpoint has seen (fractional), from its step, epoch and micro-batch count;
    None when that is not recorded (a checkpoint without ``steps_per_epoch`` that never finished an epoch)."""
    step, epoch, micro = (progress.get(k) for k in ("step", "epoch", "micro_done"))
    if step is None or epoch is None or micro is None:
        return None
    if progress.get("steps_per_epoch"):
        usable = progress["steps_per_epoch"] * accum_iter  # micro-batches per epoch
    elif epoch:  # earlier checkpoints: every finished epoch had the same length
        usable = (step * accum_iter - micro) / epoch
    else:
        return None
    return epoch + micro / usable if usable > 0 else None


def _trained_for(cfg: Dict, entry: Optional[WeightEntry], progress: Optional[Dict]) -> str:
    """How long the weights were trained: the checkpoint's steps and epochs done, else the registry's
    epochs, else the run config's plan."""
    if entry and entry.epochs:
        return f"{_md(entry.epochs)} epochs"
    if progress and progress.get("step") is not None:
        step = int(progress["step"])
        text = f"{step} optimizer step{'s' * (step != 1)}"
        epochs = _epochs_done(progress, int(cfg.get("accum_iter") or 1))
        if epochs is not None:
            text += f" ({f'{epochs:.2f}'.rstrip('0').rstrip('.')} epochs of the data)"
        return text
    if cfg.get("max_steps"):
        return f"{_md(cfg['max_steps'])} optimizer step{'s' * (cfg['max_steps'] != 1)}"
    if cfg.get("epochs"):
        return f"{_md(cfg['epochs'])} epochs"
    return "an unrecorded length"


def model_card(
    model: torch.nn.Module,
    repo_id: Optional[str],
    config: Optional[Dict] = None,
    entry: Optional[WeightEntry] = None,
    progress: Optional[Dict] = None,
) -> str:
    """A README.md model card: what it is, how long on which data, recipe, metrics, usage (timm and
    transformers), citation, license. ``progress``: the checkpoint's ``step``, ``epoch``, ``micro_done``
    and ``steps_per_epoch`` (what was trained, not what was planned). Every value that comes from a user
    (run config, registry entry) is escaped: front matter values are YAML strings, text is inert
    markdown (HTML escaped), and local paths are reduced to their last component."""
    name = model.pretrained_cfg["architecture"]
    cfg = config or {}
    if repo_id is not None:
        check_repo_id(repo_id)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    load = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    hf_load = repo_id or "/path/to/this/folder"
    license_ = entry.license if entry else "apache-2.0"
    data = entry.data if entry else cfg.get("data")
    data = _md(_public(data)) if data else "the built-in procedural videos"
    size = entry.input_size if entry else cfg.get("input_size")
    size = _md(size) if size else None
    stride = int(model.feature_info[-1]["reduction"]) if getattr(model, "feature_info", None) else None
    length = _trained_for(cfg, entry, progress)
    preset = f" (preset {_md(_public(cfg['preset']))})" if cfg.get("preset") else ""
    prep = "ImageNet mean/std, bicubic resize"
    prep += f", {size}×{size} crops during pretraining." if size else "; the pretraining input size was not recorded."
    rows = ""
    if entry and entry.metrics:
        rows = "\n".join(f"| {_md(k)} | {_md(v)} |" for k, v in entry.metrics.items())
        rows = f"\n## Results\n\n| benchmark | score |\n| --- | ---: |\n{rows}\n"
        if entry.metrics_source == "paper":
            rows += "\nThese are the paper's Table 1 figures for this backbone and recipe.\n"
    recipe = "\n".join(
        f"| {k} | {_md(_public(cfg[k]))} |"
        for k in (
            "model",
            "input_size",
            "mask_ratio",
            "gap",
            "gamma",
            "norm_pix_loss",
            "epochs",
            "max_steps",
            "blr",
            "lr",
            "weight_decay",
            "ema_base",
            "total_batch",
            "batch_size",
            "motion_weight",
        )
        # --max-steps overrides --epochs: the epochs setting then describes nothing that ran
        if k in cfg and cfg[k] is not None and not (k == "epochs" and cfg.get("max_steps"))
    )
    recipe = f"\n## Pretraining recipe\n\n| setting | value |\n| --- | --- |\n{recipe}\n" if recipe else ""
    recipe += _converted_from(model)
    title = _md(repo_id or name)
    license_md = _md(license_)
    return f"""---
library_name: timm
license: {_yaml(license_)}
tags:
- image-feature-extraction
- timm
- videomac
- self-supervised
---
# {title}

A {name} encoder ({params:.1f}M parameters, {model.num_features} output channels, stride {stride}) pretrained
with VideoMAC (masked video modeling with sparse ConvNets, CVPR 2024) on {data} for {length}{preset}. It is a plain timm
backbone without a classifier, for video object segmentation, label propagation and fine-tuning.
{recipe}{rows}
## Usage

```python
import timm, videomac  # importing videomac registers the architecture with timm

model = timm.create_model('{load}', pretrained=True)                      # headless backbone
feats = timm.create_model('{load}', pretrained=True, features_only=True)  # 4 feature maps
clf = timm.create_model('{load}', pretrained=True, num_classes=10)        # add a classifier
```

With Hugging Face transformers (its timm wrapper; `import videomac` first, or transformers reports the
architecture as unknown and suggests upgrading timm):

```python
import videomac  # registers the architecture with timm, which transformers uses
from transformers import AutoModel, AutoModelForImageClassification, pipeline

model = AutoModel.from_pretrained('{hf_load}')                                      # headless backbone
clf = AutoModelForImageClassification.from_pretrained('{hf_load}', num_labels=10)  # add a classifier
extract = pipeline('image-feature-extraction', model='{hf_load}')                  # PIL image -> feature map
```

Preprocessing: {prep}

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

{license_md}
"""


def _converted_from(model: torch.nn.Module) -> str:
    """The download a converted authors' release came from, with its sha256 (safetensors metadata)."""
    path = (getattr(model, "pretrained_cfg", None) or {}).get("file") or ""
    if not (path.endswith(".safetensors") and os.path.isfile(path)):
        return ""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if not meta.get("source_sha256"):
        return ""
    origin = f"`{meta['source_url']}`" if meta.get("source_url") else "the authors' checkpoint"
    return f"\nConverted from {origin}, sha256 `{meta['source_sha256']}`.\n"


# What export writes and push uploads, and nothing else: safetensors weights, timm's config, the card.
PUBLISHED_FILES = ("model.safetensors", "config.json", "README.md")


def _check_destination(out_dir: str, source, flag: str = "--out") -> None:
    """The output rule (:mod:`videomac.outputs`: not over the source, not into a run), and not into a dataset."""
    from videomac.eval.outputs import dataset_marker
    from videomac.outputs import OutputError, check_outputs

    check_outputs([None if isinstance(source, torch.nn.Module) else source], folders={flag: out_dir})
    data = dataset_marker(out_dir)
    if data:
        raise OutputError(f"{flag} {out_dir} is inside the dataset {data}; export into a folder outside it")


def _publish(src: str, dst: str) -> None:
    # a rename into atomic_file's exclusive temporary: the target is replaced whole or not at all
    with atomic_file(dst) as tmp:
        os.replace(src, tmp)


def export_folder(
    source,
    out_dir: str,
    repo_id: Optional[str] = None,
    include_checkpoint: bool = False,
    tag: Optional[str] = None,
    trust_pickle: bool = False,
) -> Dict:
    """Write a Hub-ready folder: ``model.safetensors`` (timm keys), timm's ``config.json``, a
    ``README.md`` model card, and optionally the full pretraining checkpoint.

    ``source`` is a checkpoint path, a run folder, or a dense timm model. The checkpoint is read with
    ``torch.load(weights_only=True)`` (``trust_pickle``: without, for an earlier videomac's files you
    wrote); ``include_checkpoint`` copies it only when it passes that load and its checksum. ``out_dir``
    may not be a run folder or lie in a dataset (:class:`~videomac.outputs.OutputError`);
    every file is written atomically. The summary's ``files`` are the files written, nothing else.
    """
    import tempfile

    from timm.models import save_for_hf

    config = None
    if include_checkpoint and trust_pickle:
        raise ValueError(
            "--include-checkpoint publishes the checkpoint: it must load with weights_only=True, so it cannot "
            "be combined with --trust-pickle (resume the run once with --trust-pickle to rewrite it safely)"
        )
    if include_checkpoint and isinstance(source, torch.nn.Module):
        raise ValueError("include_checkpoint needs a checkpoint or run folder as source")
    _check_destination(out_dir, source)
    if isinstance(source, torch.nn.Module):
        model = source
    else:
        model = encoder_from_checkpoint(source, trust_pickle=trust_pickle)
        config = model.videomac_config
    name = model.pretrained_cfg["architecture"]
    entry = find_entry(name, tag=tag) if tag else None
    os.makedirs(out_dir, exist_ok=True)
    model_config = dict(pretrained_cfg=dict(tag=tag)) if tag else None
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        save_for_hf(model, tmp, model_config=model_config, safe_serialization=True)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(model, repo_id, config, entry, getattr(model, "videomac_progress", None)))
        with open(os.path.join(tmp, "config.json")) as f:
            hf_config = json.load(f)
        # transformers' timm wrapper passes num_classes itself (0, or num_labels) next to model_args, so a
        # num_classes there is a duplicate keyword; timm reads the root num_classes, which stays
        hf_config.get("model_args", {}).pop("num_classes", None)
        if not tag:  # the architecture's default tag names the registry's weights, not these
            hf_config["pretrained_cfg"].pop("tag", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        for fname in PUBLISHED_FILES:  # timm's pytorch_model.bin, if any, stays behind: no pickles
            _publish(os.path.join(tmp, fname), os.path.join(out_dir, fname))
    files = list(PUBLISHED_FILES)
    if include_checkpoint:
        ck = source if os.path.isfile(source) else os.path.join(source, CHECKPOINT)
        load_checkpoint(ck)  # weights-only and checksum: what was loaded above is what gets copied
        with atomic_file(os.path.join(out_dir, CHECKPOINT)) as tmp:
            shutil.copyfile(ck, tmp)
        files.append(CHECKPOINT)
    weights = os.path.join(out_dir, "model.safetensors")
    return dict(folder=out_dir, architecture=name, files=sorted(files), sha256=sha256_file(weights), config=hf_config)


def upload_list(folder: str, names=PUBLISHED_FILES) -> List[str]:
    """The files of ``folder`` that :func:`push` uploads: exactly ``names`` (the export's allow-list),
    each a regular file directly inside ``folder`` (no symlink, nothing resolving outside it), none a
    pickle. Raises ``ValueError`` naming the first file that is not."""
    real = os.path.realpath(folder)
    out = []
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith((".safetensors", ".json", ".md")):
            raise ValueError(
                f"{path}: push uploads only safetensors weights, config.json and README.md, "
                "never a pickle (.pt/.pth/.bin)"
            )
        if os.path.islink(path) or not os.path.isfile(path):
            raise ValueError(f"{path}: not a regular file (symlinks are never uploaded); re-run push to rebuild it")
        if os.path.dirname(os.path.realpath(path)) != real:
            raise ValueError(f"{path} resolves outside {folder}; re-run push to rebuild the folder")
        out.append(name)
    return out


def push(
    source,
    repo_id: str,
    dry_run: bool = False,
    folder: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    tag: Optional[str] = None,
    trust_pickle: bool = False,
    api=None,
) -> Dict:
    """Build the repo folder (see :func:`export_folder`) and upload exactly :func:`upload_list`'s files
    with one explicit ``create_commit`` (``summary['upload']``; ``dry_run`` lists them, uploads nothing).
    Other files in ``folder`` (stale exports, ``.env``, links) are never sent. ``api``: an ``HfApi``."""
    check_repo_id(repo_id)
    if folder is None:
        base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        folder = os.path.join(base, "hub", repo_id.replace("/", "--"))
    _check_destination(folder, source, "--folder")  # before export_folder, whose messages say --out
    summary = export_folder(source, folder, repo_id, False, tag, trust_pickle=trust_pickle)
    summary["repo_id"] = repo_id
    summary["upload"] = upload_list(folder, summary["files"])
    if dry_run:
        summary["uploaded"] = False
        return summary
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=os.path.join(folder, n)) for n in summary["upload"]]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id, ops, revision=revision, commit_message=f"Add {summary['architecture']} VideoMAC weights"
        )
    except Exception as e:  # the HTTP client's errors (httpx, requests, huggingface_hub's) share no base class
        raise ConnectionError(
            f"cannot push to {api.endpoint} ({_first_line(e)}); check the network, HF_ENDPOINT and your token "
            f"(huggingface-cli login); the folder {folder} is ready to upload again"
        ) from e
    summary.update(uploaded=True, commit=getattr(commit, "oid", None))
    return summary


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def hub_entrypoints() -> Dict[str, Callable]:
    """One torch.hub entry point per registered videomac model, sharing timm's registry."""
    import timm

    import videomac.models  # noqa: F401  (registers the models)

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
