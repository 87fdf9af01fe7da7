"""Evaluation metrics, re-implemented to match the reference definitions.

* DAVIS region similarity J and boundary F-measure follow the official ``davis2017-evaluation``
  toolkit (``db_eval_iou``, ``db_eval_boundary``/``f_measure`` with ``seg2bmap`` and a disk dilation,
  ``db_statistics``); the disk dilation is computed exactly without OpenCV/scikit-image.
* VIP mIoU: confusion matrix accumulated over all evaluated frames, IoU per class, mean over classes.
* JHMDB PCK follows CRW's ``eval_pck.py``: the threshold is ``alpha`` times 0.6 x the diagonal of the
  ground-truth joints' bounding box, the first frame is skipped, joints with no prediction are skipped,
  PCK is computed per joint and then averaged over joints.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "db_eval_iou",
    "db_eval_boundary",
    "f_measure",
    "seg2bmap",
    "disk_dilate",
    "db_statistics",
    "confusion_matrix",
    "miou_from_confusion",
    "joint_distances",
    "pck_from_distances",
    "pck",
]


def db_eval_iou(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: Optional[np.ndarray] = None
) -> np.ndarray:
    """Region similarity J (IoU) of binary masks ``(..., H, W)``; 1 where both masks are empty."""
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"shape mismatch: {annotation.shape} vs {segmentation.shape}")
    keep = np.ones_like(annotation) if void_pixels is None else ~np.asarray(void_pixels).astype(bool)
    inters = np.sum(segmentation & annotation & keep, axis=(-2, -1))
    union = np.sum((segmentation | annotation) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inters / union
    j = np.where(np.isclose(union, 0), 1.0, j)
    return j.astype(np.float64) if j.ndim else float(j)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (the toolkit's ``_seg2bmap`` at native size)."""
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def disk_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with ``skimage.morphology.disk(radius)`` (``x**2 + y**2 <= r**2``).

    Decomposed into one horizontal run-dilation per disk row (prefix sums), so it is exact and costs
    O((2r+1) H W) instead of O(r**2 H W).
    """
    mask = np.asarray(mask).astype(bool)
    r = int(radius)
    if r <= 0:
        return mask.copy()
    H, W = mask.shape
    # Horizontal dilation by half-width w: any(mask[y, x-w : x+w+1]) via a prefix sum over columns.
    csum = np.zeros((H, W + 1), dtype=np.int32)
    np.cumsum(mask, axis=1, out=csum[:, 1:])
    cols = np.arange(W)
    out = np.zeros((H, W), dtype=bool)
    rows_cache: Dict[int, np.ndarray] = {}
    for dy in range(-r, r + 1):
        w = int(np.floor(np.sqrt(r * r - dy * dy)))
        if w not in rows_cache:
            lo = np.clip(cols - w, 0, W)
            hi = np.clip(cols + w + 1, 0, W)
            rows_cache[w] = (csum[:, hi] - csum[:, lo]) > 0
        hd = rows_cache[w]
        # out[y] |= hd[y + dy]
        if dy >= 0:
            out[: H - dy] |= hd[dy:]
        else:
            out[-dy:] |= hd[: H + dy]
    return out


def f_measure(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    void_pixels: Optional[np.ndarray] = None,
    bound_th: float = 0.008,
) -> float:
    """Boundary F-measure of one frame (the toolkit's ``f_measure``)."""
    foreground_mask = np.asarray(foreground_mask).astype(bool)
    gt_mask = np.asarray(gt_mask).astype(bool)
    keep = np.ones_like(gt_mask) if void_pixels is None else ~np.asarray(void_pixels).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = seg2bmap(foreground_mask & keep)
    gt_boundary = seg2bmap(gt_mask & keep)
    fg_dil = disk_dilate(fg_boundary, int(bound_pix))
    gt_dil = disk_dilate(gt_boundary, int(bound_pix))
    gt_match = gt_boundary & fg_dil
    fg_match = fg_boundary & gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: Optional[np.ndarray] = None,
    bound_th: float = 0.008,
):
    """Boundary F of ``(H, W)`` masks (a float) or ``(T, H, W)`` masks (an array of ``T``)."""
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"shape mismatch: {annotation.shape} vs {segmentation.shape}")
    if annotation.ndim == 2:
        return f_measure(segmentation, annotation, void_pixels, bound_th)
    out = np.zeros(annotation.shape[0])
    for t in range(annotation.shape[0]):
        v = None if void_pixels is None else void_pixels[t]
        out[t] = f_measure(segmentation[t], annotation[t], v, bound_th)
    return out


def db_statistics(per_frame_values: Sequence[float]) -> Tuple[float, float, float]:
    """(Mean, Recall = fraction > 0.5, Decay = mean of the first minus the last of 4 bins)."""
    v = np.asarray(per_frame_values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        M = np.nanmean(v)
        O = np.nanmean(v > 0.5)  # noqa: E741
    n_bins = 4
    # The toolkit casts these to uint8; int64 is the same for the < 256 frames of any DAVIS sequence.
    ids = (np.round(np.linspace(1, len(v), n_bins + 1) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(n_bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        D = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(M), float(O), float(D)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = ground truth; ``ignore_index`` pixels are skipped."""
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: {gt.shape} vs {pred.shape}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    pred = np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(gt[keep] * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: np.ndarray) -> Tuple[float, np.ndarray]:
    """(mean IoU over classes that occur in ground truth or prediction, per-class IoU with NaN for absent)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return (float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")), iou


def joint_distances(pred: np.ndarray, gt: np.ndarray, skip_first: bool = True) -> List[np.ndarray]:
    """Per-joint lists of box-normalized distances for one video, ``pred``/``gt`` ``(2, J, T)`` (x, y).

    As CRW's eval_pck: a prediction with a negative or NaN coordinate counts as "not predicted" and is
    skipped, both as a distance and when taking the box of the ground-truth joints; the box size is
    0.6 x its diagonal; the first frame (given as input) is skipped.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[0] != 2:
        raise ValueError(f"pred and gt must both be (2, J, T), got {pred.shape} and {gt.shape}")
    visible = ~(np.isnan(pred).any(0) | (pred < 0).any(0))  # (J, T)
    g = np.where(visible[None], gt, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        lo, hi = np.nanmin(g, axis=1), np.nanmax(g, axis=1)  # (2, T)
        box = 0.6 * np.linalg.norm(hi - lo, axis=0)  # (T,)
        dist = np.linalg.norm(pred - gt, axis=0) / box[None]  # (J, T)
    if skip_first:
        visible[:, 0] = False
    return [dist[j][visible[j]] for j in range(dist.shape[0])]


def pck_from_distances(per_joint: Sequence[Sequence[float]], alphas: Sequence[float] = (0.1, 0.2)) -> Dict[str, float]:
    """``{'PCK@0.1': ..}`` in [0, 1]: per-joint fraction of distances ``<= alpha``, averaged over joints."""
    out = {}
    for a in alphas:
        vals = [np.mean(np.asarray(d) <= a) for d in per_joint if len(d)]
        out[f"PCK@{a:g}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def pck(pred: np.ndarray, gt: np.ndarray, alphas: Sequence[float] = (0.1, 0.2), skip_first: bool = True):
    """PCK of one video (see :func:`joint_distances`); pool distances over videos for a dataset score."""
    return pck_from_distances(joint_distances(pred, gt, skip_first), alphas)
