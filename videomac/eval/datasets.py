"""Readers for the label-propagation benchmarks; each validates its layout up front and names
exactly what is missing. Layouts are documented in docs/evaluation.md.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from videomac.palette import davis_palette as default_palette

__all__ = [
    "DatasetLayoutError",
    "read_image",
    "read_label_png",
    "read_palette",
    "write_label_png",
    "DavisDataset",
    "VipDataset",
    "JhmdbDataset",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing files or folders (the message lists them)."""


def _fail(name: str, root: str, problems: List[str], limit: int = 12) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetLayoutError(
            f"{name} layout problem under {root}:\n  " + "\n  ".join(problems[:limit]) + more
        )


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _list_files(folder: str, exts: Sequence[str]) -> List[str]:
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(tuple(exts))), key=_natural_key)


def read_image(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_label_png(path: str) -> np.ndarray:
    """``(H, W)`` uint8 label indices of an indexed ('P') or grayscale PNG."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: expected an indexed (palette) or grayscale label PNG, got mode {im.mode}")
        a = np.asarray(im)
    if a.max(initial=0) > 255:
        raise ValueError(f"{path}: label values above 255")
    return a.astype(np.uint8)


def read_palette(path: str) -> Optional[np.ndarray]:
    """The ``(256, 3)`` palette of an indexed PNG, or None."""
    with Image.open(path) as im:
        pal = im.getpalette()
    if not pal:
        return None
    pal = np.asarray(pal[: 256 * 3], dtype=np.uint8)
    return np.pad(pal, (0, 768 - pal.size)).reshape(256, 3)


def write_label_png(label_map: np.ndarray, path: str, palette: Optional[np.ndarray] = None) -> str:
    """Save ``(H, W)`` uint8 labels as an indexed PNG (DAVIS format)."""
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label map must be 2-D, got {lab.shape}")
    im = Image.fromarray(np.ascontiguousarray(lab, dtype=np.uint8), mode="L").convert("P")
    im.putpalette((default_palette() if palette is None else palette).reshape(-1).tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    im.save(path)
    return path


class DavisDataset:
    """DAVIS-2017: ``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png`` (palette PNGs) and
    ``ImageSets/2017/<split>.txt``. ``images=False`` checks only what the metric needs."""

    def __init__(self, root: str, split: str = "val", resolution: str = "480p", images: bool = True,
                 sequences: Optional[Sequence[str]] = None):
        self.root = root
        self.split = split
        self.ann_dir = os.path.join(root, "Annotations", resolution)
        self.img_dir = os.path.join(root, "JPEGImages", resolution)
        set_file = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
        problems = []
        if not os.path.isdir(root):
            _fail("DAVIS", root, [f"root folder {root} does not exist"])
        if not os.path.isfile(set_file):
            problems.append(f"missing split list {set_file}")
        if not os.path.isdir(self.ann_dir):
            problems.append(f"missing folder {self.ann_dir}")
        if images and not os.path.isdir(self.img_dir):
            problems.append(f"missing folder {self.img_dir}")
        _fail("DAVIS", root, problems)
        with open(set_file) as f:
            listed = [ln.strip() for ln in f if ln.strip()]
        if sequences:
            unknown = [s for s in sequences if s not in listed]
            if unknown:
                raise ValueError(f"sequences not in {set_file}: {', '.join(unknown)}")
            listed = list(sequences)
        self.sequences = listed
        for seq in listed:
            adir = os.path.join(self.ann_dir, seq)
            if not os.path.isdir(adir):
                problems.append(f"missing annotation folder {adir}")
            elif not _list_files(adir, (".png",)):
                problems.append(f"no PNG annotations in {adir}")
            if images:
                idir = os.path.join(self.img_dir, seq)
                if not os.path.isdir(idir):
                    problems.append(f"missing image folder {idir}")
                elif not _list_files(idir, (".jpg", ".jpeg")):
                    problems.append(f"no JPEG frames in {idir}")
        _fail("DAVIS", root, problems)

    def annotation_names(self, seq: str) -> List[str]:
        return [os.path.splitext(f)[0] for f in _list_files(os.path.join(self.ann_dir, seq), (".png",))]

    def frame_paths(self, seq: str) -> List[str]:
        d = os.path.join(self.img_dir, seq)
        return [os.path.join(d, f) for f in _list_files(d, (".jpg", ".jpeg"))]

    def frame_names(self, seq: str) -> List[str]:
        return [os.path.splitext(os.path.basename(p))[0] for p in self.frame_paths(seq)]

    def load_frames(self, seq: str) -> np.ndarray:
        return np.stack([read_image(p) for p in self.frame_paths(seq)])

    def annotation_path(self, seq: str, name: str) -> str:
        return os.path.join(self.ann_dir, seq, f"{name}.png")

    def load_annotation(self, seq: str, name: str) -> np.ndarray:
        return read_label_png(self.annotation_path(seq, name))

    def first_annotation(self, seq: str) -> Tuple[str, np.ndarray]:
        """Name and labels of the first frame's annotation (it must match the first image)."""
        frames = self.frame_names(seq)
        path = self.annotation_path(seq, frames[0])
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"DAVIS: missing first-frame annotation {path}")
        return frames[0], read_label_png(path)


@dataclass
class VideoEntry:
    name: str
    image_dir: str
    label_path: str  # a label folder (VIP) or a joint_positions.mat (JHMDB)


def _read_list(list_file: str, root: str, two_col_default) -> List[VideoEntry]:
    """A list file: one video per line, either ``<name>`` or CRW's ``<image dir> <label path>``."""
    out = []
    with open(list_file) as f:
        for ln in f:
            cols = ln.split()
            if not cols:
                continue
            if len(cols) >= 2:
                img, lbl = (c if os.path.isabs(c) else os.path.join(root, c) for c in cols[:2])
                out.append(VideoEntry(os.path.basename(os.path.normpath(img)), img, lbl))
            else:
                out.append(two_col_default(cols[0]))
    return out


class VipDataset:
    """VIP (CRW evaluation layout): ``Images/<video>/*.jpg``, ``Category_ids/<video>/*.png`` (class ids
    0..19, also accepted under ``Annotations/Category_ids``) and a list of validation videos
    (``lists/val_videos.txt`` or ``val_videos.txt``: one name per line, or CRW's two-column
    ``<image dir> <label dir>`` lines)."""

    NUM_CLASSES = 20

    def __init__(self, root: str, list_file: Optional[str] = None, videos: Optional[Sequence[str]] = None):
        self.root = root
        if not os.path.isdir(root):
            _fail("VIP", root, [f"root folder {root} does not exist"])
        img_root = os.path.join(root, "Images")
        lbl_candidates = [os.path.join(root, "Category_ids"), os.path.join(root, "Annotations", "Category_ids")]
        lbl_root = next((c for c in lbl_candidates if os.path.isdir(c)), lbl_candidates[0])
        list_candidates = [list_file] if list_file else [
            os.path.join(root, "lists", "val_videos.txt"), os.path.join(root, "val_videos.txt")]
        lf = next((c for c in list_candidates if os.path.isfile(c)), None)
        if lf is None:
            _fail("VIP", root, [f"missing video list (looked for {', '.join(list_candidates)})"])
        entries = _read_list(lf, root, lambda n: VideoEntry(n, os.path.join(img_root, n), os.path.join(lbl_root, n)))
        if videos:
            names = {e.name for e in entries}
            unknown = [v for v in videos if v not in names]
            if unknown:
                raise ValueError(f"videos not in {lf}: {', '.join(unknown)}")
            entries = [e for e in entries if e.name in set(videos)]
        problems = []
        for e in entries:
            if not os.path.isdir(e.image_dir):
                problems.append(f"missing image folder {e.image_dir}")
            if not os.path.isdir(e.label_path):
                problems.append(f"missing label folder {e.label_path} (Category_ids PNGs)")
            elif os.path.isdir(e.image_dir):
                imgs = {os.path.splitext(f)[0] for f in _list_files(e.image_dir, IMAGE_EXTS)}
                lbls = [os.path.splitext(f)[0] for f in _list_files(e.label_path, (".png",))]
                if not imgs:
                    problems.append(f"no frames in {e.image_dir}")
                elif not lbls:
                    problems.append(f"no label PNGs in {e.label_path}")
                elif min(imgs, key=_natural_key) not in lbls:
                    problems.append(f"{e.label_path} lacks the first frame's labels "
                                    f"({min(imgs, key=_natural_key)}.png)")
        _fail("VIP", root, problems)
        self.videos = entries

    def frame_paths(self, v: VideoEntry) -> List[str]:
        return [os.path.join(v.image_dir, f) for f in _list_files(v.image_dir, IMAGE_EXTS)]

    def label_path(self, v: VideoEntry, frame_path: str) -> Optional[str]:
        p = os.path.join(v.label_path, os.path.splitext(os.path.basename(frame_path))[0] + ".png")
        return p if os.path.isfile(p) else None


class JhmdbDataset:
    """JHMDB (CRW evaluation layout): frame folders ``Rename_Images/<action>/<video>/00001.png`` and
    ``joint_positions/<action>/<video>/joint_positions.mat`` (``pos_img``: ``(2, 15, T)``, 1-based x, y),
    with a list file (``jhmdb_vallist.txt`` or ``val_list.txt`` in the root, or ``list_file``): one
    ``<action>/<video>`` per line, or CRW's two-column ``<frame dir> <joint_positions.mat>`` lines."""

    NUM_JOINTS = 15

    def __init__(self, root: str, list_file: Optional[str] = None, videos: Optional[Sequence[str]] = None):
        self.root = root
        if not os.path.isdir(root):
            _fail("JHMDB", root, [f"root folder {root} does not exist"])
        list_candidates = [list_file] if list_file else [
            os.path.join(root, "jhmdb_vallist.txt"), os.path.join(root, "val_list.txt")]
        lf = next((c for c in list_candidates if os.path.isfile(c)), None)
        if lf is None:
            _fail("JHMDB", root, [f"missing video list (looked for {', '.join(list_candidates)})"])

        def one_col(n: str) -> VideoEntry:
            return VideoEntry(n, os.path.join(root, "Rename_Images", n),
                              os.path.join(root, "joint_positions", n, "joint_positions.mat"))

        entries = _read_list(lf, root, one_col)
        for e in entries:
            if os.path.isdir(e.label_path):  # CRW lists sometimes give the folder
                e.label_path = os.path.join(e.label_path, "joint_positions.mat")
        if videos:
            entries = [e for e in entries if e.name in set(videos)]
        problems = []
        for e in entries:
            if not os.path.isdir(e.image_dir):
                problems.append(f"missing frame folder {e.image_dir}")
            elif not _list_files(e.image_dir, IMAGE_EXTS):
                problems.append(f"no frames in {e.image_dir}")
            if not os.path.isfile(e.label_path):
                problems.append(f"missing joints file {e.label_path}")
        _fail("JHMDB", root, problems)
        self.videos = entries

    def frame_paths(self, v: VideoEntry) -> List[str]:
        return [os.path.join(v.image_dir, f) for f in _list_files(v.image_dir, IMAGE_EXTS)]

    def load_joints(self, v: VideoEntry) -> np.ndarray:
        """``(2, 15, T)`` 0-based pixel (x, y) of the joints."""
        try:
            from scipy.io import loadmat
        except ImportError as e:  # pragma: no cover
            raise ImportError("reading JHMDB joint_positions.mat needs scipy (pip install scipy)") from e
        m = loadmat(v.label_path)
        if "pos_img" not in m:
            raise ValueError(f"{v.label_path} has no 'pos_img' array")
        pos = np.asarray(m["pos_img"], dtype=np.float64) - 1.0
        if pos.ndim != 3 or pos.shape[0] != 2:
            raise ValueError(f"{v.label_path}: pos_img should be (2, J, T), got {pos.shape}")
        return pos
