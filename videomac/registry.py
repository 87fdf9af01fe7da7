"""Reads the published-weights registry (``videomac/weights/registry.json``, package data).

It is the single source of truth for timm's pretrained_cfgs, the torch.hub entry points, model
cards and the model-zoo page. ``VIDEOMAC_WEIGHTS_REGISTRY=/path/registry.json`` replaces it (an
organisation's own registry, or tests), read once at import.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Dict, List, Optional, Tuple

__all__ = ["WeightEntry", "registry_path", "load_registry", "entries_for", "find_entry", "is_plain_file_name"]

ENV_VAR = "VIDEOMAC_WEIGHTS_REGISTRY"
FORMATS = ("timm", "authors")  # timm: safetensors on the Hugging Face Hub; authors: their .pth, converted on download


@dataclass(frozen=True)
class WeightEntry:
    model: str
    tag: str
    hf_hub_id: Optional[str] = None
    filename: str = "model.safetensors"
    url: Optional[str] = None
    format: str = "timm"
    source: Optional[str] = None
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
        """On the Hugging Face Hub with a known sha256."""
        return bool(self.sha256) and self.format == "timm"

    @property
    def authors(self) -> bool:
        """The authors' release: downloaded from ``url`` and converted (sha256 pinned only if known)."""
        return self.format == "authors"

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


_STR, _OPT_STR, _OPT_INT = (str,), (str, type(None)), (int, type(None))
_TYPES = dict(
    model=_STR,
    tag=_STR,
    hf_hub_id=_OPT_STR,
    filename=_STR,
    url=_OPT_STR,
    format=_STR,
    source=_OPT_STR,
    revision=_OPT_STR,
    sha256=_OPT_STR,
    recipe=_OPT_STR,
    data=_OPT_STR,
    epochs=_OPT_INT,
    input_size=(int,),
    metrics=(dict,),
    metrics_source=_OPT_STR,
    license=_STR,
)


def is_plain_file_name(name: str) -> bool:
    """A name that stays in the folder it is joined to: no separator, not ``.``/``..``, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _check_entry(path: str, i: int, raw) -> None:
    """One clear line naming the entry and field for any schema error."""
    where = f"registry {path}: weights[{i}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is {type(raw).__name__}, expected an object")
    where += f" ({raw.get('model')}.{raw.get('tag')})"
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown} (known: {', '.join(_TYPES)})")
    for k in ("model", "tag", "filename"):
        if not raw.get(k):
            raise ValueError(f"{where} lacks the field {k!r}")
    for k, v in raw.items():
        ok = _TYPES[k]
        if not isinstance(v, ok) or isinstance(v, bool):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in ok)
            raise ValueError(f"{where}: field {k!r} is {type(v).__name__} {v!r}, expected {want}")
    if not is_plain_file_name(raw["filename"]):
        raise ValueError(
            f"{where}: field 'filename' is {raw['filename']!r}, expected a plain file name (no '/', '\\', '..')"
        )
    url = raw.get("url")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+/\S*", url):
        raise ValueError(f"{where}: field 'url' is {url!r}, expected an http(s) URL")
    fmt = raw.get("format", "timm")
    if fmt not in FORMATS:
        raise ValueError(f"{where}: field 'format' is {fmt!r}, expected one of {FORMATS}")
    if fmt == "timm" and not raw.get("hf_hub_id"):
        raise ValueError(f"{where}: a 'timm' entry needs 'hf_hub_id'")
    if fmt == "authors" and not raw.get("url"):
        raise ValueError(f"{where}: an 'authors' entry needs 'url'")
    sha = raw.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{where}: field 'sha256' is {sha!r}, expected 64 lowercase hex digits or null")
    bad = [m for m, v in raw.get("metrics", {}).items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{where}: metrics {bad} are not numbers")


@cache
def _load(path: str) -> Tuple[WeightEntry, ...]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"registry {path} is not valid JSON: {e}") from None
    weights = doc.get("weights", []) if isinstance(doc, dict) else None
    if not isinstance(weights, list):
        raise ValueError(f"registry {path}: expected an object with a 'weights' list")
    out, seen = [], set()
    for i, raw in enumerate(weights):
        _check_entry(path, i, raw)
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
