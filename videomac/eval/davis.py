"""DAVIS-2017 semi-supervised J&F, as the official ``davis2017-evaluation`` toolkit computes it.

Per sequence: objects are ``1..N`` with ``N`` the largest id in the first ground-truth frame; void
pixels (255) become background (the toolkit passes no void mask in the semi-supervised task -- set
``ignore_void=True`` to exclude them instead); the first and last frames are dropped; result PNGs
may hold fewer objects (missing ones count as empty masks) but not more. J and F per frame and
object, then Mean/Recall/Decay per object (``db_statistics``), then the mean over all objects.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from videomac.eval.datasets import DatasetLayoutError, DavisDataset, read_label_png
from videomac.eval.metrics import db_eval_boundary, db_eval_iou, db_statistics

__all__ = ["GLOBAL_KEYS", "evaluate", "evaluate_sequence", "write_csvs"]

GLOBAL_KEYS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def evaluate_sequence(
    gt: np.ndarray, res: np.ndarray, ignore_void: bool = False, bound_th: float = 0.008
) -> List[Dict[str, float]]:
    """Per-object statistics of one sequence. ``gt`` ``(T, H, W)`` holds all annotated frames
    (first and last included); ``res`` ``(T - 2, H, W)`` the results for frames ``1..T-2``."""
    gt = np.array(gt, dtype=np.uint8)
    void = gt == 255
    gt[void] = 0
    num_objects = int(gt[0].max())
    gt, void = gt[1:-1], void[1:-1]
    res = np.asarray(res)
    if res.shape != gt.shape:
        raise ValueError(f"results have shape {res.shape}, ground truth {gt.shape}")
    if res.size and int(res.max()) > num_objects:
        raise ValueError(f"results hold object id {int(res.max())} but the sequence has {num_objects} objects")
    rows = []
    for obj in range(1, num_objects + 1):
        a, s = gt == obj, res == obj
        v = void if ignore_void else None
        j = np.atleast_1d(db_eval_iou(a, s, v)) if len(a) else np.zeros(0)
        f = np.atleast_1d(db_eval_boundary(a, s, v, bound_th)) if len(a) else np.zeros(0)
        jm, jr, jd = db_statistics(j)
        fm, fr, fd = db_statistics(f)
        rows.append({"object": obj, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                     "F-Mean": fm, "F-Recall": fr, "F-Decay": fd, "J": j.tolist(), "F": f.tolist()})
    return rows


def evaluate(
    davis_root: str,
    results_dir: str,
    sequences: Optional[Sequence[str]] = None,
    split: str = "val",
    ignore_void: bool = False,
    progress: bool = False,
) -> Dict[str, object]:
    """J&F of the palette PNGs ``results_dir/<seq>/<frame>.png`` against ``davis_root``.

    Needs only ``Annotations/480p`` and ``ImageSets/2017/<split>.txt`` under ``davis_root``. Returns the
    global keys (:data:`GLOBAL_KEYS`) and ``'per_sequence'``: a list of dicts with ``sequence`` (the
    toolkit's ``<seq>_<object>`` name is ``name``), ``object``, ``J-Mean``, ``F-Mean`` and the other
    per-object statistics.
    """
    ds = DavisDataset(davis_root, split=split, images=False, sequences=sequences)
    missing = []
    for seq in ds.sequences:
        for name in ds.annotation_names(seq)[1:-1]:
            p = os.path.join(results_dir, seq, f"{name}.png")
            if not os.path.isfile(p):
                missing.append(p)
    if missing:
        more = f" ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetLayoutError(f"missing result masks: {', '.join(missing[:5])}{more}")
    it = ds.sequences
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="J&F", unit="seq")
    per_seq = []
    for seq in it:
        names = ds.annotation_names(seq)
        gt = np.stack([ds.load_annotation(seq, n) for n in names])
        res = [read_label_png(os.path.join(results_dir, seq, f"{n}.png")) for n in names[1:-1]]
        res = np.stack(res) if res else np.zeros((0,) + gt.shape[1:], np.uint8)
        if res.shape[1:] != gt.shape[1:]:
            raise ValueError(f"{seq}: result masks are {res.shape[1:]}, annotations {gt.shape[1:]}")
        for row in evaluate_sequence(gt, res, ignore_void=ignore_void):
            per_seq.append({"sequence": seq, "name": f"{seq}_{row['object']}", **row})
    out: Dict[str, object] = {}
    jm = float(np.mean([r["J-Mean"] for r in per_seq])) if per_seq else float("nan")
    fm = float(np.mean([r["F-Mean"] for r in per_seq])) if per_seq else float("nan")
    out["J&F-Mean"] = (jm + fm) / 2
    for k in GLOBAL_KEYS[1:]:
        out[k] = float(np.mean([r[k] for r in per_seq])) if per_seq else float("nan")
    out["per_sequence"] = per_seq
    return out


def write_csvs(metrics: Dict[str, object], out_dir: str, split: str = "val") -> List[str]:
    """Write the toolkit's ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``
    (same names and columns, so the official ``evaluation_method.py`` reuses them)."""
    os.makedirs(out_dir, exist_ok=True)
    g = os.path.join(out_dir, f"global_results-{split}.csv")
    with open(g, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(GLOBAL_KEYS)
        w.writerow([f"{metrics[k]:.6f}" for k in GLOBAL_KEYS])
    s = os.path.join(out_dir, f"per-sequence_results-{split}.csv")
    with open(s, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sequence", "J-Mean", "F-Mean"])
        for r in metrics["per_sequence"]:
            w.writerow([r["name"], f"{r['J-Mean']:.6f}", f"{r['F-Mean']:.6f}"])
    return [g, s]
