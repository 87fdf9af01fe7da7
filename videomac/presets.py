"""The paper's pretraining recipes (docs/design.md §1), one per backbone: ``videomac pretrain --preset NAME``.

Plain data, so the weights layer (its "train your own" message), the pretraining loop and the
publishing code can all read them without importing one another.
"""

from __future__ import annotations

from typing import Dict, Optional

__all__ = ["PAPER", "PRESETS", "preset_for_model"]

# What the authors' scripts (scripts/mac_*.sh) and code ran: every pair an epoch, their init, the EMA
# momentum as their engine indexes it. AMP: their ConvNeXt scripts use fp16 autocast, ResNet fp32;
# ConvNeXt presets use bf16 here (same speed on current GPUs, no loss scaling, also on CPU).
PAPER: Dict = dict(
    input_size=224,
    mask_ratio=0.75,
    gamma=1.0,
    norm_pix_loss=True,
    total_batch=512,
    epochs=100,
    warmup_epochs=10.0,
    blr=1.0e-3,
    weight_decay=0.05,
    ema_base=0.996,
    ema_schedule="authors",
    init="authors",
    gap=1,
    pairs_per_video=None,
    clip_grad=None,
)
_CNX = dict(PAPER, amp="bf16")
_RN = dict(PAPER, amp="none")

PRESETS: Dict[str, Dict] = {
    "paper-rn18": dict(_RN, model="videomac_rn18"),
    "paper-rn50": dict(_RN, model="videomac_rn50"),
    "paper-rn101": dict(_RN, model="videomac_rn101"),
    "paper-cnxv2-t": dict(_CNX, model="videomac_cnxv2_t"),
    "paper-cnxv2-s": dict(_CNX, model="videomac_cnxv2_s"),
    "paper-cnxv2-iso-s": dict(_CNX, model="videomac_cnxv2_iso_s"),
    # scripts/mac_cnxv1.sh trains with batch 256 (lr 1e-3), the others with 512 (lr 2e-3)
    "paper-cnxv1-t": dict(_CNX, model="videomac_cnxv1_t", total_batch=256),
    "paper-cnxv1-s": dict(_CNX, model="videomac_cnxv1_s", total_batch=256),
}


def preset_for_model(model: str) -> Optional[str]:
    """The paper preset that trains ``model``, if any."""
    return next((name for name, p in PRESETS.items() if p["model"] == model), None)
