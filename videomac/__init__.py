"""VideoMAC: masked video modeling with sparse ConvNets (CVPR 2024).

``import videomac`` registers the encoders with timm (``timm.create_model('videomac_rn50')``) and
gives ``videomac.SparseEncoder``, ``videomac.VideoMAC``, ``videomac.masking`` and
``videomac.register_sparse_container``.
"""

import importlib
import os
import sys

from videomac.version import __version__

__all__ = ["SparseEncoder", "VideoMAC", "masking", "register_sparse_container", "register_block", "__version__"]

_HOMES = {
    "SparseEncoder": "videomac.models",
    "register_sparse_container": "videomac.models",
    "register_block": "videomac.models",
    "VideoMAC": "videomac.pretrain.model",
    "masking": "videomac.masking",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'videomac' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _is_console_script() -> bool:
    # The `videomac` command imports what each subcommand runs (every models/ import registers the
    # encoders), so `videomac --help` starts without loading torch.
    main = sys.modules.get("__main__")
    script = sys.argv[0] if sys.argv else ""
    return os.path.basename(script) == "videomac" and getattr(main, "__file__", None) == script


if not _is_console_script():
    importlib.import_module("videomac.models")  # registers the videomac_* encoders with timm
