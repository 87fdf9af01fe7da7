"""DAVIS semi-supervised J&F, as the official ``davis2017-evaluation`` toolkit computes it.

Per sequence: objects are ``1..N`` with ``N`` the largest id in the first ground-truth frame; void
pixels (255) become background (the toolkit passes no void mask in the semi-supervised task -- set
``ignore_void=True`` to exclude them instead); the first and last frames are dropped; result PNGs
may hold fewer objects (missing ones count as empty masks) but not more. J and F per frame and
object, then Mean/Recall/Decay per object (``db_statistics``), then the mean over all objects.

Both DAVIS layouts are read (:class:`~videomac.eval.datasets.DavisDataset`); in the DAVIS-2016 layout
a 0/255 mask is one object (id 1), never void, so it scores exactly as the same mask stored as a
DAVIS-2017 palette PNG with id 1.

Sequences with nothing to score are excluded from the means, with a warning naming them and the list
in the output (``excluded_sequences``): fewer than 3 annotated frames (the first and last are never
scored) or a first annotation with no object. If no sequence is left, :func:`evaluate` raises
``ValueError``. Object ids that skip numbers (e.g. ``{1, 200}``) are scored as the toolkit scores them
-- every id up to the largest is an object, the absent ones empty masks (J = F = 1 when the result is
empty too) -- with a warning naming the implied empty objects.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from videomac.eval.annotations import check_annotation_size
from videomac.eval.datasets import DatasetLayoutError, DavisDataset
from videomac.eval.metrics import db_eval_boundary, db_eval_iou, db_statistics
from videomac.files import atomic_file

__all__ = ["GLOBAL_KEYS", "evaluate", "evaluate_sequence", "sequence_problem", "write_csvs"]

GLOBAL_KEYS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def evaluate_sequence(
    gt: np.ndarray, res: np.ndarray, ignore_void: bool = False, bound_th: float = 0.008
) -> List[Dict[str, float]]:
    """Per-object statistics of one sequence. ``gt`` ``(T, H, W)`` holds all annotated frames
    (first and last included); ``res`` ``(T - 2, H, W)`` the results for frames ``1..T-2``.
    With ``T < 3`` or no object in ``gt[0]`` there is nothing to score (NaN means or no rows):
    :func:`evaluate` excludes such sequences (see :func:`sequence_problem`)."""
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
        rows.append(
            {
                "object": obj,
                "J-Mean": jm,
                "J-Recall": jr,
                "J-Decay": jd,
                "F-Mean": fm,
                "F-Recall": fr,
                "F-Decay": fd,
                "J": j.tolist(),
                "F": f.tolist(),
            }
        )
    return rows


def sequence_problem(first: np.ndarray, num_annotated: int, layout: str = "DAVIS-2017") -> Optional[str]:
    """Why a sequence has nothing to score (its first annotation ``first`` as read, ``num_annotated``
    annotated frames), or None when it can be scored."""
    if num_annotated < 3:
        return (
            f"only {num_annotated} annotated frame{'s' if num_annotated != 1 else ''}: "
            "the first and last frames are never scored"
        )
    ids = np.unique(first)
    if not (ids[(ids != 0) & (ids != 255)]).size:
        why = "the first annotation has no object"
        if layout == "DAVIS-2017" and 255 in ids:
            why += (
                ": it holds only 0 and 255, which DAVIS-2017 reads as void; for a DAVIS-2016 0/255 mask "
                "use the DAVIS-2016 layout (ImageSets/480p/<split>.txt path pairs)"
            )
        return why
    return None


def _empty_ids(first: np.ndarray) -> List[int]:
    ids = set(np.unique(first).tolist()) - {0, 255}
    return [i for i in range(1, max(ids, default=0) + 1) if i not in ids]


def _ranges(ids: List[int]) -> str:
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}..{ids[j]}")
        i = j + 1
    return ", ".join(out)


def evaluate(
    davis_root: str,
    results_dir: str,
    sequences: Optional[Sequence[str]] = None,
    split: str = "val",
    ignore_void: bool = False,
    progress: bool = False,
    layout: Optional[str] = None,
) -> Dict[str, object]:
    """J&F of the palette PNGs ``results_dir/<seq>/<frame>.png`` against ``davis_root``.

    ``layout``: None/``'auto'`` detects DAVIS-2016 or DAVIS-2017 (see
    :class:`~videomac.eval.datasets.DavisDataset`); only annotations and the split list are needed.
    Returns the global keys (:data:`GLOBAL_KEYS`, means over the objects of the scored sequences),
    ``'per_sequence'`` (dicts with ``sequence``, the toolkit's ``<seq>_<object>`` ``name``, ``object``,
    ``J-Mean``, ``F-Mean`` and the other per-object statistics), ``'excluded_sequences'`` (dicts with
    ``sequence`` and ``reason``: sequences with nothing to score, warned about) and ``'layout'``.
    Raises ``ValueError`` when no sequence has anything to score.
    """
    ds = DavisDataset(davis_root, split=split, images=False, sequences=sequences, layout=layout)
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
    per_seq, excluded = [], []
    for seq in it:
        names = ds.annotation_names(seq)
        first = ds.load_annotation(seq, names[0])
        why = sequence_problem(first, len(names), ds.layout)
        if why is not None:
            excluded.append({"sequence": seq, "reason": why})
            continue
        empty = _empty_ids(first)
        if empty:
            warnings.warn(
                f"DAVIS {seq}: the first annotation's object ids skip {_ranges(empty)}; as the official toolkit, "
                f"every id up to {int(first[first != 255].max())} is scored as an object, so these "
                f"{len(empty)} are empty objects (J = F = 1 when the result leaves them empty)",
                UserWarning,
                stacklevel=2,
            )
        gt = [first] + [ds.load_annotation(seq, n) for n in names[1:]]
        for n, a in zip(names[1:], gt[1:]):
            check_annotation_size(
                f"annotation {ds.annotation_path(seq, n)}",
                a.shape,
                first.shape,
                f"the first annotation {ds.annotation_path(seq, names[0])}",
            )
        gt = np.stack(gt)
        res = [ds.read_result(os.path.join(results_dir, seq, f"{n}.png")) for n in names[1:-1]]
        res = np.stack(res)
        if res.shape[1:] != gt.shape[1:]:
            raise ValueError(f"{seq}: result masks are {res.shape[1:]}, annotations {gt.shape[1:]}")
        for row in evaluate_sequence(gt, res, ignore_void=ignore_void):
            per_seq.append({"sequence": seq, "name": f"{seq}_{row['object']}", **row})
    listing = "; ".join(f"{e['sequence']} ({e['reason']})" for e in excluded)
    if not per_seq:
        raise ValueError(f"no DAVIS sequence has anything to score: {listing}")
    if excluded:
        warnings.warn(
            f"DAVIS: {len(excluded)} of {len(ds.sequences)} sequences excluded from the means, nothing to score: "
            f"{listing}",
            UserWarning,
            stacklevel=2,
        )
    out: Dict[str, object] = {}
    jm = float(np.mean([r["J-Mean"] for r in per_seq]))
    fm = float(np.mean([r["F-Mean"] for r in per_seq]))
    out["J&F-Mean"] = (jm + fm) / 2
    for k in GLOBAL_KEYS[1:]:
        out[k] = float(np.mean([r[k] for r in per_seq]))
    out["per_sequence"] = per_seq
    out["excluded_sequences"] = excluded
    out["layout"] = ds.layout
    return out


def write_csvs(metrics: Dict[str, object], out_dir: str, split: str = "val") -> List[str]:
    """Write the toolkit's ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``
    (same names and columns, so the official ``evaluation_method.py`` reuses them), and
    ``excluded-sequences-<split>.csv`` (``Sequence,Reason``: the sequences left out of the means; only the
    header when none was)."""
    os.makedirs(out_dir, exist_ok=True)
    g = os.path.join(out_dir, f"global_results-{split}.csv")
    with atomic_file(g) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(GLOBAL_KEYS)
        w.writerow([f"{metrics[k]:.6f}" for k in GLOBAL_KEYS])
    s = os.path.join(out_dir, f"per-sequence_results-{split}.csv")
    with atomic_file(s) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sequence", "J-Mean", "F-Mean"])
        for r in metrics["per_sequence"]:
            w.writerow([r["name"], f"{r['J-Mean']:.6f}", f"{r['F-Mean']:.6f}"])
    x = os.path.join(out_dir, f"excluded-sequences-{split}.csv")
    with atomic_file(x) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sequence", "Reason"])
        for e in metrics.get("excluded_sequences", []):
            w.writerow([e["sequence"], e["reason"]])
    return [g, s, x]
