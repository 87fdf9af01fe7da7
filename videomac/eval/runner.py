"""End-to-end label-propagation evaluations: DAVIS (2016 and 2017 layouts), VIP and JHMDB.

Each runner streams a video's frames through a :class:`~videomac.eval.features.FeatureExtractor`
(a few frames at a time, :func:`encode_frames`), propagates the first frame's labels with
:func:`~videomac.eval.propagation.propagate_frames`, writes predictions and overlay contact sheets,
and returns the metrics. Label maps go to feature resolution by bilinear resizing of their one-hot
maps and come back by bilinear resizing of the propagated soft maps followed by an argmax, as CRW.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from itertools import chain
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from videomac.eval.annotations import check_annotation_size
from videomac.eval.datasets import (
    DavisDataset,
    JhmdbDataset,
    VipDataset,
    default_palette,
    read_image,
    read_label_png,
    write_label_png,
)
from videomac.eval.davis import evaluate, write_csvs
from videomac.eval.features import FeatureExtractor
from videomac.eval.metrics import confusion_matrix, joint_distances, miou_from_confusion, pck_from_distances
from videomac.eval.outputs import check_output_folder
from videomac.eval.propagation import PropagationConfig, labels_to_onehot, propagate_frames, resize_labels
from videomac.files import atomic_file

__all__ = [
    "run_davis",
    "run_vip",
    "vip_confusion",
    "run_jhmdb",
    "argmax_labels",
    "encode_frames",
    "blend_labels",
    "contact_sheet",
    "gaussian_joint_maps",
    "maps_to_joints",
]


def _tqdm(it, progress: bool, **kw):
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def _read(path: str, reader=read_image) -> np.ndarray:
    """``reader(path)``; an image that does not decode stops the evaluation with one line naming it
    (a benchmark scored without one of its frames would not be the benchmark)."""
    try:
        return reader(path)
    except (OSError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"cannot read {path} ({type(e).__name__}: {e}); replace the file (every frame of the benchmark must decode)"
        ) from e


def _image_hw(path: str) -> Tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _check_annotations(items) -> None:
    """Read every ``(annotation path, reader, frame path)`` under the annotation rules and check its size
    against its frame's, before any propagation: a bad file fails in a second, not after the run."""
    for ann, reader, frame in items:
        lab = _read(ann, reader)
        check_annotation_size(f"annotation {ann}", lab.shape, _read(frame, _image_hw), f"its frame {frame}")


def _load(path: str, size: Optional[Tuple[int, int]]) -> np.ndarray:
    img = _read(path)
    if size is not None and img.shape[:2] != tuple(size):
        img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    return img


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_frames(extractor: FeatureExtractor, frames: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Each frame's ``(C, h, w)`` features, encoded ``batch_size`` frames at a time as they are read."""
    for batch in _batched(frames, batch_size):
        yield from extractor(np.stack(batch), batch_size=batch_size)


def _features(extractor: FeatureExtractor, paths: Sequence[str], size, batch_size: int) -> Iterator[torch.Tensor]:
    return encode_frames(extractor, (_load(p, size) for p in paths), batch_size)


def _overlay_indices(n: int, k: int) -> List[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(k, n))}) if n else []


def blend_labels(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8: the non-zero labels' palette colours blended over ``image`` (labels are
    nearest-resized to the image if their size differs)."""
    img = np.asarray(image, np.float32)
    lab = np.asarray(labels)
    if lab.shape != img.shape[:2]:
        lab = np.asarray(Image.fromarray(lab.astype(np.uint8)).resize(img.shape[1::-1], Image.NEAREST))
    col = np.asarray(palette)[lab].astype(np.float32)
    fg = (lab > 0)[..., None]
    return np.where(fg, (1 - alpha) * img + alpha * col, img).clip(0, 255).astype(np.uint8)


def contact_sheet(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    palette: np.ndarray,
    path: str,
    titles: Optional[Sequence[str]] = None,
    width: int = 320,
    cols: int = 3,
    alpha: float = 0.5,
) -> str:
    """Blend each label map (non-zero labels, palette colours) over its image; tile them into one PNG."""
    from PIL import ImageDraw

    tiles = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        out = blend_labels(img, lab, palette, alpha)
        h = max(1, round(out.shape[0] * width / out.shape[1]))
        tile = Image.fromarray(out).resize((width, h), Image.BILINEAR)
        if titles:
            ImageDraw.Draw(tile).text((4, 4), str(titles[i]), fill=(255, 255, 255))
        tiles.append(tile)
    if not tiles:
        raise ValueError("no frames for the contact sheet")
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    th = max(t.size[1] for t in tiles)
    sheet = Image.new("RGB", (cols * width, rows * th))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * width, (i // cols) * th))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def argmax_labels(soft: torch.Tensor, size, ids: np.ndarray) -> np.ndarray:
    up = resize_labels(soft.float(), size)
    return ids[up.argmax(0).cpu().numpy()]


def run_davis(
    extractor: FeatureExtractor,
    root: str,
    out_dir: str,
    sequences: Optional[Sequence[str]] = None,
    config: Optional[PropagationConfig] = None,
    split: str = "val",
    batch_size: int = 8,
    overlay_frames: int = 6,
    progress: bool = True,
    tile: int = 8,
    max_chunk_mb: float = 256.0,
    layout: Optional[str] = None,
) -> Dict[str, object]:
    """Propagate DAVIS first-frame masks; writes ``out_dir/<seq>/<frame>.png`` (palette PNGs for the
    official toolkit), ``global_results-<split>.csv``, ``per-sequence_results-<split>.csv``,
    ``excluded-sequences-<split>.csv``, ``results.json`` and ``overlays/<seq>.png``; returns
    :func:`videomac.eval.davis.evaluate`'s dict.

    ``layout``: None/``'auto'`` detects DAVIS-2016 (``ImageSets/480p/<split>.txt`` path pairs, 0/255
    masks = one object) or DAVIS-2017 (``ImageSets/2017/<split>.txt``); the detected layout is printed
    on stderr and saved in ``results.json`` (``layout``)."""
    ds = DavisDataset(root, split=split, sequences=sequences, layout=layout)
    folders = {os.path.dirname(ds.annotation_path(s, n)) for s in ds.sequences for n in ds.annotation_names(s)[:1]}
    check_output_folder(out_dir, [root, ds.ann_dir, ds.img_dir, *sorted(folders)])
    print(f"DAVIS layout: {ds.describe_layout()}", file=sys.stderr)
    for seq in ds.sequences:
        frames = dict(zip(ds.frame_names(seq), ds.frame_paths(seq)))
        _check_annotations(
            (ds.annotation_path(seq, n), lambda p, s=seq, n=n: ds.load_annotation(s, n), frames[n])
            for n in ds.annotation_names(seq)
            if n in frames
        )
    for seq in _tqdm(ds.sequences, progress, desc="DAVIS", unit="seq"):
        paths, names = ds.frame_paths(seq), ds.frame_names(seq)
        _, ann0 = _read(ds.annotation_path(seq, names[0]), lambda _, s=seq: ds.first_annotation(s))
        palette = ds.palette(seq)
        palette = default_palette() if palette is None else palette
        ann0 = ann0.copy()
        ann0[ann0 == 255] = 0
        ids = np.union1d([0], np.unique(ann0)).astype(np.uint8)
        size = ann0.shape
        keep = set(_overlay_indices(len(paths), overlay_frames))
        shown = {}
        onehot = labels_to_onehot(torch.from_numpy(ann0), ids.tolist())
        feats = _features(extractor, paths, None, batch_size)
        steps = propagate_frames(feats, onehot, config, tile=tile, max_chunk_mb=max_chunk_mb)
        for t, soft in enumerate(_tqdm(steps, progress, desc=seq, total=len(paths), leave=False, unit="frame")):
            lab = ann0 if t == 0 else argmax_labels(soft, size, ids)
            write_label_png(lab, os.path.join(out_dir, seq, f"{names[t]}.png"), palette)
            if t in keep:
                shown[t] = lab
        if overlay_frames:
            ts = sorted(shown)
            contact_sheet(
                [_read(paths[t]) for t in ts],
                [shown[t] for t in ts],
                palette,
                os.path.join(out_dir, "overlays", f"{seq}.png"),
                titles=[names[t] for t in ts],
            )
    metrics = evaluate(root, out_dir, ds.sequences, split=split, layout=ds.layout)
    write_csvs(metrics, out_dir, split)
    _write_json(metrics, extractor, config, os.path.join(out_dir, "results.json"), "davis")
    return metrics


def _write_json(metrics, extractor, config, path, benchmark) -> None:
    cfg = config or PropagationConfig()
    blob = {"benchmark": benchmark, "encoder": extractor.describe(), "propagation": cfg.__dict__, **metrics}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(blob, f, indent=1, default=float)


def run_vip(
    extractor: FeatureExtractor,
    root: str,
    out_dir: str,
    list_file: Optional[str] = None,
    videos: Optional[Sequence[str]] = None,
    config: Optional[PropagationConfig] = None,
    size: int = 560,
    batch_size: int = 8,
    overlay_frames: int = 6,
    progress: bool = True,
    tile: int = 8,
    max_chunk_mb: float = 256.0,
) -> Dict[str, object]:
    """VIP part propagation at ``size x size`` (CRW), scored as CRW's ``eval_vip.py``: mIoU over 20 classes
    from one confusion matrix accumulated over every labelled frame of every video, **frame 0 included**
    (CRW saves a prediction for frame 0 -- the given labels taken to feature resolution and back, as
    every propagated map -- and ``eval_vip.py`` scores every saved prediction that has a label PNG);
    each prediction is upsampled (nearest) from ``size x size`` to its annotation's native size before
    the confusion matrix (see :func:`vip_confusion`). Writes the ``size x size`` predictions
    ``out_dir/<video>/<frame>.png``, ``per-video_results.csv``, ``results.json`` and overlays; returns
    ``mIoU``, ``per_class_IoU``, ``confusion_matrix`` (rows = ground truth) and ``per_video``."""
    ds = VipDataset(root, list_file=list_file, videos=videos)
    check_output_folder(out_dir, [root, ds.list_file] + [p for v in ds.videos for p in (v.image_dir, v.label_path)])
    for v in ds.videos:
        labelled = [(ds.label_path(v, p), p) for p in ds.frame_paths(v)]
        _check_annotations((lp, read_label_png, p) for lp, p in labelled if lp is not None)
    n = VipDataset.NUM_CLASSES
    conf = np.zeros((n, n), np.int64)
    pal = default_palette()
    rows = []
    sz = (size, size)
    for v in _tqdm(ds.videos, progress, desc="VIP", unit="video"):
        paths = ds.frame_paths(v)
        lab0 = _resize_nearest(_read(ds.label_path(v, paths[0]), read_label_png), sz)
        ids = np.union1d([0], np.unique(lab0[lab0 < n])).astype(np.uint8)
        onehot = labels_to_onehot(torch.from_numpy(np.array(lab0)), ids.tolist())
        keep = set(_overlay_indices(len(paths), overlay_frames))
        shown, vconf = {}, np.zeros((n, n), np.int64)
        feats = _features(extractor, paths, sz, batch_size)
        steps = propagate_frames(feats, onehot, config, tile=tile, max_chunk_mb=max_chunk_mb)
        for t, soft in enumerate(_tqdm(steps, progress, desc=v.name, total=len(paths), leave=False, unit="frame")):
            # frame 0 too: the given labels at feature resolution, brought back like every prediction (CRW)
            pred = argmax_labels(soft, sz, ids)
            stem = os.path.splitext(os.path.basename(paths[t]))[0]
            write_label_png(pred, os.path.join(out_dir, v.name, f"{stem}.png"), pal)
            gp = ds.label_path(v, paths[t])
            if gp is not None:
                vconf += vip_confusion(_read(gp, read_label_png), pred, n)
            if t in keep:
                shown[t] = pred
        conf += vconf
        rows.append({"video": v.name, "mIoU": miou_from_confusion(vconf)[0]})
        if overlay_frames:
            ts = sorted(shown)
            contact_sheet(
                [_load(paths[t], sz) for t in ts],
                [shown[t] for t in ts],
                pal,
                os.path.join(out_dir, "overlays", f"{v.name}.png"),
            )
    miou, per_class = miou_from_confusion(conf)
    metrics = {"mIoU": miou, "per_class_IoU": per_class.tolist(), "confusion_matrix": conf.tolist(), "per_video": rows}
    _write_rows(rows, ["video", "mIoU"], os.path.join(out_dir, "per-video_results.csv"))
    _write_json(metrics, extractor, config, os.path.join(out_dir, "results.json"), "vip")
    return metrics


def vip_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """Confusion matrix of one VIP frame as CRW's ``eval_vip.py``: the prediction (any size) is resized
    with nearest neighbour (PIL) to the annotation's native size ``gt.shape``; ground-truth values
    outside ``0..num_classes-1`` are skipped."""
    gt = np.asarray(gt)
    return confusion_matrix(gt, _resize_nearest(np.asarray(pred, np.uint8), gt.shape), num_classes)


def _resize_nearest(lab: np.ndarray, size) -> np.ndarray:
    if lab.shape == tuple(size):
        return lab
    return np.asarray(Image.fromarray(lab).resize((size[1], size[0]), Image.NEAREST))


def _write_rows(rows: List[dict], keys: List[str], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([f"{r[k]:.6f}" if isinstance(r[k], float) else r[k] for k in keys])


def gaussian_joint_maps(xy: np.ndarray, size: Tuple[int, int], sigma: float = 0.5) -> np.ndarray:
    """``(J + 1, h, w)`` maps: background first, then one unnormalized Gaussian (peak 1) per joint at
    feature coordinates ``xy`` ``(2, J)`` -- CRW's ``draw_labelmap_np`` (a ``6 sigma + 1`` patch)."""
    h, w = size
    J = xy.shape[1]
    maps = np.zeros((J, h, w), np.float32)
    n = int(np.ceil(6 * sigma + 1))
    g1 = np.arange(n, dtype=np.float64)
    c = (6 * sigma + 1) // 2
    g = np.exp(-((g1[None] - c) ** 2 + (g1[:, None] - c) ** 2) / (2 * sigma**2))
    for j in range(J):
        x, y = xy[:, j]
        if not np.isfinite([x, y]).all():
            continue
        ul = (int(x - 3 * sigma), int(y - 3 * sigma))
        br = (int(x + 3 * sigma + 1), int(y + 3 * sigma + 1))
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            continue
        gx = max(0, -ul[0]), min(br[0], w) - ul[0]
        gy = max(0, -ul[1]), min(br[1], h) - ul[1]
        ix = max(0, ul[0]), min(br[0], w)
        iy = max(0, ul[1]), min(br[1], h)
        maps[j, iy[0] : iy[1], ix[0] : ix[1]] = g[gy[0] : gy[1], gx[0] : gx[1]]
    bg = (maps.sum(0) == 0).astype(np.float32)
    return np.concatenate([bg[None], maps])


def maps_to_joints(maps: torch.Tensor, topk: int = 3) -> np.ndarray:
    """``(2, J)`` feature coordinates from ``(J + 1, h, w)`` maps: weighted mean of each joint map's
    ``topk`` cells (CRW's ``process_pose``); -1 where a joint's map is all zero."""
    m = maps[1:].flatten(1).float()  # (J, hw)
    w = maps.shape[-1]
    k = min(topk, m.shape[1])
    vals, idx = torch.topk(m, k, dim=1)
    vals = vals / vals.sum(1, keepdim=True)
    xy = torch.stack([((idx % w) * vals).sum(1), ((idx // w) * vals).sum(1)])
    xy[:, m.sum(1) == 0] = -1
    return xy.cpu().numpy()


def run_jhmdb(
    extractor: FeatureExtractor,
    root: str,
    out_dir: str,
    list_file: Optional[str] = None,
    videos: Optional[Sequence[str]] = None,
    config: Optional[PropagationConfig] = None,
    size: int = 320,
    sigma: float = 0.5,
    batch_size: int = 8,
    overlay_frames: int = 6,
    progress: bool = True,
    tile: int = 8,
    max_chunk_mb: float = 256.0,
) -> Dict[str, object]:
    """JHMDB pose propagation at ``size x size`` (CRW): 15 Gaussian joint maps at feature resolution,
    joints read back as the weighted mean of each map's top-3 cells; PCK@0.1/0.2 pooled over videos."""
    ds = JhmdbDataset(root, list_file=list_file, videos=videos)
    check_output_folder(out_dir, [root, ds.list_file] + [p for v in ds.videos for p in (v.image_dir, v.label_path)])
    J = JhmdbDataset.NUM_JOINTS
    pooled: List[List[float]] = [[] for _ in range(J)]
    rows = []
    pal = default_palette()
    for v in _tqdm(ds.videos, progress, desc="JHMDB", unit="video"):
        paths = ds.frame_paths(v)
        gt = ds.load_joints(v)
        T = min(len(paths), gt.shape[2])
        paths, gt = paths[:T], gt[:, :, :T]
        H0, W0 = _read(paths[0]).shape[:2]
        feats = _features(extractor, paths, (size, size), batch_size)
        f0 = next(feats)  # the joint maps are drawn at feature resolution: its size comes first
        h, w = f0.shape[-2:]
        scale = np.array([w / W0, h / H0])[:, None]
        lab0 = torch.from_numpy(gaussian_joint_maps(gt[:, :, 0] * scale, (h, w), sigma))
        steps = propagate_frames(chain([f0], feats), lab0, config, tile=tile, max_chunk_mb=max_chunk_mb)
        preds = [maps_to_joints(m) for m in _tqdm(steps, progress, desc=v.name, total=T, leave=False, unit="frame")]
        pred = np.stack(preds, -1)  # (2, J, T) feature cells
        valid = (pred >= 0).all(0, keepdims=True)
        pred_px = np.where(valid, pred / scale[:, :, None], -1.0)
        d = joint_distances(pred_px, gt)
        for j in range(J):
            pooled[j].extend(d[j].tolist())
        rows.append({"video": v.name, **pck_from_distances(d)})
        np.save(os.path.join(_mkdir(os.path.join(out_dir, "keypoints")), f"{v.name.replace('/', '__')}.npy"), pred_px)
        if overlay_frames:
            ts = _overlay_indices(T, overlay_frames)
            imgs = [_read(paths[t]) for t in ts]
            labs = [_joint_dots(pred_px[:, :, t], (H0, W0)) for t in ts]
            contact_sheet(
                imgs, labs, pal, os.path.join(out_dir, "overlays", f"{v.name.replace('/', '__')}.png"), alpha=1.0
            )
    metrics = {**pck_from_distances(pooled), "per_video": rows}
    _write_rows(rows, ["video", "PCK@0.1", "PCK@0.2"], os.path.join(out_dir, "per-video_results.csv"))
    _write_json(metrics, extractor, config, os.path.join(out_dir, "results.json"), "jhmdb")
    return metrics


def _mkdir(d: str) -> str:
    os.makedirs(d, exist_ok=True)
    return d


def _joint_dots(xy: np.ndarray, size, r: int = 3) -> np.ndarray:
    lab = np.zeros(size, np.uint8)
    for j in range(xy.shape[1]):
        x, y = xy[:, j]
        if x >= 0 and y >= 0:
            y0, x0 = int(round(y)), int(round(x))
            lab[max(0, y0 - r) : y0 + r + 1, max(0, x0 - r) : x0 + r + 1] = j + 1
    return lab
