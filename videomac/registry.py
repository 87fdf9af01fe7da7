"""Reads the published-weights registry (``videomac/weights/registry.json``, package data).

It is the single source of truth for timm's pretrained_cfgs, the torch.hub entry points, model
cards and the model-zoo page. ``VIDEOMAC_WEIGHTS_REGISTRY=/path/registry.json`` replaces it (an
organisation's own registry, or tests), read once at import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Dict, List, Optional, Tuple

__all__ = ["WeightEntry", "registry_path", "load_registry", "entries_for", "find_entry"]

ENV_VAR = "VIDEOMAC_WEIGHTS_REGISTRY"
_REQUIRED = ("model", "tag", "hf_hub_id", "filename")


@dataclass(frozen=True)
class WeightEntry:
    model: str
    tag: str
    hf_hub_id: str
    filename: str = "model.safetensors"
    revision: Optional[str] = None
    sha256: Optional[str] = None
    recipe: Optional[str] = None
    data: Optional[str] = None
    epochs: Optional[int] = None
    input_size: int = 224
    metrics: Dict[str, float] = field(default_factory=dict)
    metrics_source: Optional[str] = None
    license: str = "apache-2.0"

    @property
    def name(self) -> str:
        """``model.tag``, the name timm knows the weights by."""
        return f"{self.model}.{self.tag}"

    @property
    def published(self) -> bool:
        return bool(self.sha256)

    @property
    def hub_ref(self) -> str:
        """``hf_hub_id[@revision]`` as timm's pretrained_cfg expects it."""
        return f"{self.hf_hub_id}@{self.revision}" if self.revision else self.hf_hub_id


def registry_path() -> str:
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.path.isfile(override):
            raise FileNotFoundError(f"{ENV_VAR}={override}: no such registry file")
        return override
    return str(resources.files("videomac.weights").joinpath("registry.json"))


@cache
def _load(path: str) -> Tuple[WeightEntry, ...]:
    with open(path) as f:
        doc = json.load(f)
    known = set(WeightEntry.__dataclass_fields__)
    out, seen = [], set()
    for i, raw in enumerate(doc.get("weights", [])):
        missing = [k for k in _REQUIRED if not raw.get(k)]
        unknown = sorted(set(raw) - known)
        if missing or unknown:
            raise ValueError(f"{path}: weights[{i}] has missing fields {missing} / unknown fields {unknown}")
        entry = WeightEntry(**raw)
        if entry.name in seen:
            raise ValueError(f"{path}: duplicate entry {entry.name}")
        seen.add(entry.name)
        out.append(entry)
    return tuple(out)


def load_registry(path: Optional[str] = None) -> List[WeightEntry]:
    return list(_load(path or registry_path()))


def entries_for(model: str) -> List[WeightEntry]:
    """This model's entries; the first is its default tag."""
    return [e for e in load_registry() if e.model == model]


def find_entry(model: str, tag: Optional[str] = None, hf_hub_id: Optional[str] = None) -> Optional[WeightEntry]:
    for e in entries_for(model):
        if (tag and e.tag == tag) or (hf_hub_id and e.hub_ref == hf_hub_id):
            return e
    return None
