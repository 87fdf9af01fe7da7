"""``videomac convert-official``: a checkpoint of the authors' MinkowskiEngine code (a file or a URL) as a
safetensors file of videomac's dense timm encoders. The reading and checks are :mod:`videomac.pretrained`;
the name map is the ``checkpoint_filter_fn`` of the model's family file, found through the model
(``pretrained=True`` converts the authors' release the same way)."""

from __future__ import annotations

import os

import videomac.models  # noqa: F401  (registers the families and their checkpoint filters)
from videomac.pretrained import (
    UntrustedCheckpointError,
    WeightsError,
    _select,
    convert_official,
    download_cached,
    forget,
    kernel_to_dense,
    load_checkpoint,
    official_state_dict,
    save_converted,
    sha256_file,
)

__all__ = [
    "UntrustedCheckpointError",
    "WeightsError",
    "load_checkpoint",
    "official_state_dict",
    "convert_official",
    "convert_official_file",
    "kernel_to_dense",
]


def convert_official_file(path: str, model_name: str, out_path: str, trust_pickle: bool = False) -> str:
    """Read an authors' checkpoint (a path, or an http(s) URL downloaded into torch.hub's cache; see
    :func:`load_checkpoint` for ``trust_pickle``), check and convert it for ``model_name`` and write a
    safetensors file that ``timm.create_model(model_name, pretrained=True,
    pretrained_cfg_overlay=dict(file=out_path))`` loads strictly. The source's sha256 is in its metadata."""
    import timm

    if not timm.is_model(model_name):
        from videomac.models.names import check_model_name

        check_model_name(model_name)
    if os.path.isdir(out_path):
        raise WeightsError(f"--out {out_path} is a directory; pass a file name such as {model_name}.safetensors")
    meta = {}
    downloaded = path.startswith(("http://", "https://"))
    if downloaded:
        url = path
        path, digest = download_cached(url, what=model_name, model=model_name)
        meta.update(source_url=url, source_sha256=digest)
    try:
        obj = load_checkpoint(path, trust_pickle=trust_pickle)
    except WeightsError:
        if downloaded:
            forget(path)  # a download that does not load is not kept for the next try
        raise
    meta.setdefault("source_sha256", sha256_file(path))
    try:
        _, source = _select(obj)
        sd, filled = convert_official(obj, model_name)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    meta.update(source=source, filled_from_init=",".join(filled))
    return save_converted(sd, out_path, model_name, meta)
