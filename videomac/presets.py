"""The paper's pretraining recipes (DESIGN.md §1), one per backbone: ``videomac pretrain --preset NAME``.

Plain data, so the weights layer (its "train your own" message), the pretraining loop and the
publishing code can all read them without importing one another.
"""

from __future__ import annotations

from typing import Dict, Optional

__all__ = ["PAPER", "PRESETS", "preset_for_model"]

PAPER: Dict = dict(
    input_size=224, mask_ratio=0.75, gamma=1.0, norm_pix_loss=True, total_batch=512, epochs=100,
    warmup_epochs=10.0, blr=1.0e-3, weight_decay=0.05, ema_base=0.996, gap=1, amp="bf16",
)  # fmt: skip

PRESETS: Dict[str, Dict] = {
    "paper-rn18": dict(PAPER, model="videomac_rn18"),
    "paper-rn50": dict(PAPER, model="videomac_rn50"),
    "paper-rn101": dict(PAPER, model="videomac_rn101"),
    "paper-cnxv2-t": dict(PAPER, model="videomac_cnxv2_t"),
    "paper-cnxv2-s": dict(PAPER, model="videomac_cnxv2_s"),
    "paper-cnxv1-t": dict(PAPER, model="videomac_cnxv1_t"),
    "paper-cnxv1-s": dict(PAPER, model="videomac_cnxv1_s"),
}


def preset_for_model(model: str) -> Optional[str]:
    """The paper preset that trains ``model``, if any."""
    return next((name for name, p in PRESETS.items() if p["model"] == model), None)
