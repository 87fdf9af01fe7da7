"""A run's loss curves as a PNG (PIL only): every loss part against steps, with the loss a model that
predicts zero would have, so learning is visible at a glance."""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence

from PIL import Image, ImageDraw

__all__ = ["read_metrics", "loss_curve_figure", "save_loss_curve"]

SERIES = (
    ("loss", "total", (20, 20, 20)),
    ("loss_online", "online L_o", (31, 119, 180)),
    ("loss_target", "target L_t", (255, 127, 14)),
    ("loss_consistency", "consistency L_c", (44, 160, 44)),
    ("loss_motion", "motion", (148, 103, 189)),
)
BASELINE_COLOUR = (200, 40, 40)


def read_metrics(path: str) -> List[Dict]:
    """The records of a run's metrics.jsonl (a resumed run's repeated steps: the last one wins)."""
    by_step: Dict[int, Dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    """About ``n`` round tick values (1, 2, 2.5 or 5 times a power of ten apart) within [lo, hi]."""
    raw = max(hi - lo, 1e-12) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def loss_curve_figure(records: Sequence[Dict], baseline: Optional[float] = 1.0, size=(880, 520)) -> Image.Image:
    """Loss parts against steps. ``baseline``: the per-part loss of predicting zero (1.0 with
    norm-pix targets: each patch's targets have mean 0 and variance ~1), drawn dashed; None: none."""
    if not records:
        raise ValueError("no metrics to plot (metrics.jsonl is empty)")
    W, H = size
    left, right, top, bottom = 70, 200, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    steps = [r["step"] for r in records]
    series = [(k, label, c) for k, label, c in SERIES if any(k in r for r in records)]
    values = [r[k] for r in records for k, _, _ in series if k in r]
    ymax = max(values + ([baseline] if baseline else [])) * 1.05
    ymin = min(0.0, min(values))
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)

    def px(step, v):
        return (
            left + (step - x0) / (x1 - x0) * (W - left - right),
            top + (1 - (v - ymin) / (ymax - ymin)) * (H - top - bottom),
        )

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for v in _nice_ticks(ymin, ymax):
        y = px(x0, v)[1]
        d.line([left - 4, y, left, y], fill=(0, 0, 0))
        d.line([left + 1, y, W - right - 1, y], fill=(235, 235, 235))
        d.text((8, y - 6), f"{v:.3g}", fill=(0, 0, 0))
    for s in _nice_ticks(x0, x1):
        x = px(s, ymin)[0]
        d.line([x, H - bottom, x, H - bottom + 4], fill=(0, 0, 0))
        d.text((x - 10, H - bottom + 8), f"{int(s)}", fill=(0, 0, 0))
    d.text(((W - right + left) // 2 - 15, H - 22), "step", fill=(0, 0, 0))
    d.text((left, 12), "VideoMAC pretraining loss (mean over each logging interval)", fill=(0, 0, 0))
    legend_y = top
    if baseline is not None:
        y = px(x0, baseline)[1]
        for x in range(left, W - right, 12):
            d.line([x, y, min(x + 6, W - right), y], fill=BASELINE_COLOUR, width=2)
        d.line([W - right + 15, legend_y + 7, W - right + 35, legend_y + 7], fill=BASELINE_COLOUR, width=2)
        d.text((W - right + 40, legend_y), "predict zero (per part)", fill=(0, 0, 0))
        legend_y += 20
    for k, label, colour in series:
        pts = [px(r["step"], r[k]) for r in records if k in r]
        if len(pts) == 1:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
        else:
            d.line(pts, fill=colour, width=2)
        d.line([W - right + 15, legend_y + 7, W - right + 35, legend_y + 7], fill=colour, width=3)
        d.text((W - right + 40, legend_y), label, fill=(0, 0, 0))
        legend_y += 20
    return img


def save_loss_curve(metrics_path: str, out_path: str, norm_pix_loss: bool = True) -> str:
    """Draw ``metrics_path`` (a run's metrics.jsonl) to ``out_path``; returns ``out_path``."""
    loss_curve_figure(read_metrics(metrics_path), baseline=1.0 if norm_pix_loss else None).save(out_path)
    return out_path
