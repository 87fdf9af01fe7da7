"""Readers for the label-propagation benchmarks; each validates its layout up front and names
exactly what is missing. Layouts are documented in docs/evaluation.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from videomac.eval.annotations import AnnotationError, read_annotation
from videomac.files import atomic_file
from videomac.media import IMAGE_EXTS, JPEG_EXTS, frame_names, image_to_rgb, natural_key
from videomac.palette import davis_palette as default_palette

__all__ = [
    "DatasetLayoutError",
    "DAVIS_LAYOUTS",
    "check_name",
    "check_relative_path",
    "normalize_davis_layout",
    "read_binary_mask",
    "read_image",
    "read_label_png",
    "read_palette",
    "write_label_png",
    "DavisDataset",
    "Davis2016Dataset",
    "Davis2017Dataset",
    "VipDataset",
    "JhmdbDataset",
]


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing files or folders (the message lists them)."""


def _fail(name: str, root: str, problems: List[str], limit: int = 12) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetLayoutError(f"{name} layout problem under {root}:\n  " + "\n  ".join(problems[:limit]) + more)


def _list_files(folder: str, exts: Sequence[str]) -> List[str]:
    return frame_names(folder, exts)  # one file per frame index, as everywhere


def read_image(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB (16-bit images scaled to 8 bits, see :func:`videomac.media.image_to_rgb`)."""
    with Image.open(path) as im:
        return image_to_rgb(im, path)


def read_label_png(path: str, what: str = "label PNG") -> np.ndarray:
    """``(H, W)`` uint8 labels of an indexed ('P'), 8-bit grayscale or 1-bit PNG
    (:func:`videomac.eval.annotations.read_annotation`'s rules: a real PNG, no colour, no 16-bit)."""
    return read_annotation(path, what)[0]


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
    with atomic_file(path, durable=False) as tmp:
        im.save(tmp, format="PNG")
    return path


def _safe_name(name: str) -> Optional[str]:
    """Why ``name`` cannot be one path component (a sequence/video/frame name), or None if it can."""
    if not name or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if "/" in name or "\\" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        return "it contains a path separator"
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "it is an absolute path"
    if "\0" in name:
        return "it contains a NUL character"
    return None


def check_name(name: str, what: str = "name", where: str = "") -> str:
    """Return ``name`` if it is one safe path component (not empty, not ``.``/``..``, no ``/`` or ``\\``, not
    absolute); otherwise raise :class:`DatasetLayoutError` naming it and ``where`` it came from (e.g.
    ``list.txt:3``). Names from list files become output paths, so this keeps every output under ``--out``."""
    why = _safe_name(name)
    if why is not None:
        at = f"{where}: " if where else ""
        raise DatasetLayoutError(f"{at}invalid {what} {name!r}: {why} (names must be single path components)")
    return name


def check_relative_path(path: str, what: str = "path", where: str = "") -> List[str]:
    """The components of a relative ``a/b/c`` path, each checked with :func:`check_name`."""
    parts = path.split("/")
    for p in parts:
        why = _safe_name(p)
        if why is not None:
            at = f"{where}: " if where else ""
            raise DatasetLayoutError(f"{at}invalid {what} {path!r}: component {p!r}: {why}")
    return parts


DAVIS_LAYOUTS = ("DAVIS-2017", "DAVIS-2016")


def normalize_davis_layout(layout: Optional[str]) -> Optional[str]:
    """``None``/``'auto'`` -> None (autodetect); ``'2016'``, ``'davis2016'``, ``'DAVIS-2016'`` -> ``'DAVIS-2016'``."""
    if layout is None:
        return None
    s = str(layout).strip().lower().replace("_", "-")
    if s in ("", "auto"):
        return None
    m = re.fullmatch(r"(davis-?)?(2016|2017)", s)
    if not m:
        raise ValueError(f"unknown DAVIS layout {layout!r}: use 'auto', '2016' or '2017'")
    return f"DAVIS-{m.group(2)}"


def read_binary_mask(path: str) -> np.ndarray:
    """A DAVIS-2016 annotation as ``(H, W)`` uint8 labels: 0 = background, 1 = the object.

    DAVIS-2016 masks are 8-bit images holding 0 (background) and 255 (object): 255 is the object here,
    never void. Read as every annotation (:func:`videomac.eval.annotations.read_annotation`); ``{0, 1}``
    masks are kept as they are; any other value is an error naming the file."""
    a = read_label_png(path, "DAVIS-2016 mask")
    vals = np.unique(a)
    if set(vals.tolist()) <= {0, 255}:
        return (a == 255).astype(np.uint8)
    if set(vals.tolist()) <= {0, 1}:
        return a
    raise AnnotationError(
        f"{path}: a DAVIS-2016 mask should hold only 0 (background) and 255 (object), found {vals[:8].tolist()}"
    )


class DavisDataset:
    """DAVIS in either of its distributed layouts (``layout``: None/``'auto'`` detects it, or ``'2016'`` /
    ``'2017'``); the detected one is :attr:`layout` (``'DAVIS-2016'`` or ``'DAVIS-2017'``) and the object
    is of its class, :class:`Davis2017Dataset` or :class:`Davis2016Dataset`.

    * DAVIS-2017: ``ImageSets/2017/<split>.txt`` (one sequence name per line),
      ``JPEGImages/480p/<seq>/*.jpg`` and ``Annotations/480p/<seq>/*.png`` palette PNGs (object ids
      ``1..N``, 255 = void).
    * DAVIS-2016: ``ImageSets/480p/<split>.txt`` whose lines are root-relative path pairs
      ``/JPEGImages/480p/<seq>/<frame>.jpg /Annotations/480p/<seq>/<frame>.png``; sequences and frame
      lists come from these pairs; masks hold 0/255 = background/object, read as ONE object (id 1),
      never void (:func:`read_binary_mask`).

    Both split lists present (or neither) is an error naming the files. Every name read from a list
    (sequence, frame) must be a single path component (:func:`check_name`): outputs are written under
    those names. ``images=False`` checks only what the metric needs."""

    # Set by each layout class: its name (one of DAVIS_LAYOUTS), its split list ImageSets/<split_dir>/<split>.txt
    # and what a line of it holds, and what its files are (for logs).
    layout: str
    split_dir: str
    split_lines: str
    contents: str

    def __new__(
        cls,
        root: Optional[str] = None,
        split: str = "val",
        resolution: str = "480p",
        images: bool = True,
        sequences: Optional[Sequence[str]] = None,
        layout: Optional[str] = None,
    ):
        if root is None:  # unpickling (or a subclass's own call): the class is already known
            return super().__new__(cls)
        if not os.path.isdir(root):
            _fail("DAVIS", root, [f"root folder {root} does not exist"])
        wanted = normalize_davis_layout(layout) if cls is DavisDataset else cls.layout
        return super().__new__(_detect_davis(root, split, resolution, wanted, images))

    def __init__(
        self,
        root: str,
        split: str = "val",
        resolution: str = "480p",
        images: bool = True,
        sequences: Optional[Sequence[str]] = None,
        layout: Optional[str] = None,
    ):
        self.root = root
        self.split = split
        self.resolution = resolution
        self.ann_dir = os.path.join(root, "Annotations", resolution)
        self.img_dir = os.path.join(root, "JPEGImages", resolution)
        self.split_file = self.split_path(root, split, resolution)
        listed = self._read_split()
        if sequences:
            unknown = [s for s in sequences if s not in listed]
            if unknown:
                raise ValueError(f"sequences not in {self.split_file}: {', '.join(map(str, unknown))}")
            listed = list(dict.fromkeys(sequences))
        self.sequences = listed
        _fail(self.layout, root, [p for seq in listed for p in self._sequence_problems(seq, images)])

    # What each layout defines.
    @classmethod
    def split_path(cls, root: str, split: str, resolution: str) -> str:
        return os.path.join(root, "ImageSets", cls.split_dir.format(res=resolution), f"{split}.txt")

    @classmethod
    def folder_problems(cls, root: str, resolution: str, images: bool) -> List[str]:
        """Missing top-level folders the layout needs."""
        return []

    def describe_layout(self) -> str:
        """One line: the layout and its split list, e.g. for a log."""
        return f"{self.layout} ({self.split_file}: {self.contents})"

    # Each layout reads its split list (_read_split), checks a sequence (_sequence_problems) and lists
    # annotation_names(seq) and frame_paths(seq); these defaults are DAVIS-2017's.
    def annotation_path(self, seq: str, name: str) -> str:
        return os.path.join(self.ann_dir, seq, f"{name}.png")

    def load_annotation(self, seq: str, name: str) -> np.ndarray:
        """``(H, W)`` uint8 object ids (DAVIS-2016: 0/1, see :func:`read_binary_mask`; DAVIS-2017: as stored,
        255 = void)."""
        return read_label_png(self.annotation_path(seq, name))

    def read_result(self, path: str) -> np.ndarray:
        """A result mask as object ids. DAVIS-2016 results may be 0/255 masks like the annotations (255 ->
        object 1) or 0/1 id maps; DAVIS-2017 results are read as stored."""
        return read_label_png(path, "result mask")

    def palette(self, seq: str) -> Optional[np.ndarray]:
        """The palette the sequence's results are written with (None: the DAVIS palette)."""
        return None

    def frame_names(self, seq: str) -> List[str]:
        return [os.path.splitext(os.path.basename(p))[0] for p in self.frame_paths(seq)]

    def first_annotation(self, seq: str) -> Tuple[str, np.ndarray]:
        """Name and labels of the first frame's annotation (it must match the first image)."""
        frames = self.frame_names(seq)
        path = self.annotation_path(seq, frames[0])
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"{self.layout}: missing first-frame annotation {path}")
        return frames[0], self.load_annotation(seq, frames[0])


class Davis2017Dataset(DavisDataset):
    """The DAVIS-2017 layout: sequence names listed, frames and palette PNGs found in their folders."""

    layout, split_dir, split_lines = "DAVIS-2017", "2017", "one sequence name per line"
    contents = "sequence names; palette PNGs, 255 = void"

    @classmethod
    def folder_problems(cls, root: str, resolution: str, images: bool) -> List[str]:
        folders = [os.path.join(root, "Annotations", resolution)]
        folders += [os.path.join(root, "JPEGImages", resolution)] if images else []
        return [f"missing folder {d}" for d in folders if not os.path.isdir(d)]

    def _read_split(self) -> List[str]:
        listed: List[str] = []
        with open(self.split_file, encoding="utf-8-sig") as f:  # a byte-order mark is not a name
            for i, ln in enumerate(f, 1):
                s = ln.strip()
                if not s:
                    continue
                where = f"{self.split_file}:{i}"
                if len(s.split()) > 1:
                    raise DatasetLayoutError(
                        f"{where}: expected one sequence name per line (DAVIS-2017), got {s!r} "
                        "(DAVIS-2016 path pairs belong in ImageSets/480p/<split>.txt)"
                    )
                check_name(s, "sequence name", where)
                if s in listed:
                    raise DatasetLayoutError(f"{where}: sequence {s!r} is listed twice")
                listed.append(s)
        return listed

    def _sequence_problems(self, seq: str, images: bool) -> List[str]:
        problems = []
        folders = [(self.ann_dir, (".png",), "annotation folder", "PNG annotations")]
        folders += [(self.img_dir, JPEG_EXTS, "image folder", "JPEG frames")] if images else []
        for top, exts, folder, files in folders:
            d = os.path.join(top, seq)
            if not os.path.isdir(d):
                problems.append(f"missing {folder} {d}")
            elif not _list_files(d, exts):
                problems.append(f"no {files} in {d}")
        return problems

    def annotation_names(self, seq: str) -> List[str]:
        return [os.path.splitext(f)[0] for f in _list_files(os.path.join(self.ann_dir, seq), (".png",))]

    def frame_paths(self, seq: str) -> List[str]:
        d = os.path.join(self.img_dir, seq)
        return [os.path.join(d, f) for f in _list_files(d, JPEG_EXTS)]

    def palette(self, seq: str) -> Optional[np.ndarray]:
        """The first annotation's own palette, if it has one."""
        return read_palette(self.annotation_path(seq, self.frame_names(seq)[0]))


class Davis2016Dataset(DavisDataset):
    """The DAVIS-2016 layout: image/annotation path pairs listed; 0/255 masks, one object."""

    layout, split_dir = "DAVIS-2016", "{res}"
    split_lines = "'/JPEGImages/{res}/<seq>/<frame>.jpg /Annotations/{res}/<seq>/<frame>.png' per line"
    contents = "image/annotation pairs; 0/255 masks = one object"

    def _read_split(self) -> List[str]:
        res = self.resolution
        self._pairs: Dict[str, List[Tuple[str, str, str]]] = {}  # seq -> [(frame name, image, annotation)]
        with open(self.split_file, encoding="utf-8-sig") as f:  # a byte-order mark is not a name
            for i, ln in enumerate(f, 1):
                cols = ln.split()
                if not cols:
                    continue
                where = f"{self.split_file}:{i}"
                if len(cols) != 2:
                    raise DatasetLayoutError(
                        f"{where}: expected '/JPEGImages/{res}/<seq>/<frame>.jpg /Annotations/{res}/<seq>/<frame>.png'"
                        f" (DAVIS-2016), got {ln.strip()!r}"
                    )
                parsed = []
                for col, top, exts in ((cols[0], "JPEGImages", JPEG_EXTS), (cols[1], "Annotations", (".png",))):
                    # root-relative paths: the leading '/' of the distributed lists is not the file system root
                    parts = check_relative_path(col.lstrip("/"), "path", where)
                    stem, ext = os.path.splitext(parts[-1])
                    if len(parts) != 4 or parts[:2] != [top, res] or ext.lower() not in exts or not stem:
                        raise DatasetLayoutError(
                            f"{where}: expected /{top}/{res}/<seq>/<frame>{exts[0]}, got {col!r} (DAVIS-2016)"
                        )
                    parsed.append((parts[2], stem, os.path.join(self.root, *parts)))
                (seq, stem, img), (aseq, astem, ann) = parsed
                if (seq, stem) != (aseq, astem):
                    raise DatasetLayoutError(f"{where}: image and annotation name different frames: {ln.strip()!r}")
                frames = self._pairs.setdefault(seq, [])
                if any(n == stem for n, _, _ in frames):
                    raise DatasetLayoutError(f"{where}: frame {seq}/{stem} is listed twice")
                frames.append((stem, img, ann))
        for frames in self._pairs.values():
            frames.sort(key=lambda p: natural_key(p[0]))
        return list(self._pairs)

    def _sequence_problems(self, seq: str, images: bool) -> List[str]:
        problems = [f"missing annotation {a}" for _, _, a in self._pairs[seq] if not os.path.isfile(a)]
        if images:
            problems += [f"missing frame {i}" for _, i, _ in self._pairs[seq] if not os.path.isfile(i)]
        return problems

    def annotation_names(self, seq: str) -> List[str]:
        return [n for n, _, _ in self._pairs[seq]]

    def frame_paths(self, seq: str) -> List[str]:
        return [p for _, p, _ in self._pairs[seq]]

    def annotation_path(self, seq: str, name: str) -> str:
        for n, _, a in self._pairs.get(seq, ()):
            if n == name:
                return a
        return super().annotation_path(seq, name)

    def load_annotation(self, seq: str, name: str) -> np.ndarray:
        return read_binary_mask(self.annotation_path(seq, name))

    def read_result(self, path: str) -> np.ndarray:
        lab = super().read_result(path)
        if lab.max(initial=0) == 255 and set(np.unique(lab).tolist()) <= {0, 255}:
            lab = (lab == 255).astype(np.uint8)
        return lab


_DAVIS_CLASSES = {c.layout: c for c in (Davis2017Dataset, Davis2016Dataset)}  # in DAVIS_LAYOUTS order


def _detect_davis(root: str, split: str, resolution: str, layout: Optional[str], images: bool) -> type:
    """The layout class whose split list is there (``layout`` None: exactly one must be); fails naming
    what is missing."""
    files = {name: c.split_path(root, split, resolution) for name, c in _DAVIS_CLASSES.items()}
    what = {n: f"{files[n]} ({n}: {c.split_lines.format(res=resolution)})" for n, c in _DAVIS_CLASSES.items()}
    if layout is None:
        found = [name for name in DAVIS_LAYOUTS if os.path.isfile(files[name])]
        if len(found) == 2:
            raise DatasetLayoutError(
                f"DAVIS layout under {root} is ambiguous: both "
                + " and ".join(f"{files[n]} ({n})" for n in DAVIS_LAYOUTS)
                + " exist; choose one with layout='2016' or '2017'"
            )
        problems = [] if found else ["missing split list " + " or ".join(what[n] for n in DAVIS_LAYOUTS)]
    else:
        found = [layout]
        problems = [] if os.path.isfile(files[layout]) else [f"missing split list {what[layout]}"]
    cls = _DAVIS_CLASSES[found[0] if found else DAVIS_LAYOUTS[0]]
    _fail(found[0] if found else "DAVIS", root, problems + cls.folder_problems(root, resolution, images))
    return cls


@dataclass
class VideoEntry:
    name: str
    image_dir: str
    label_path: str  # a label folder (VIP) or a joint_positions.mat (JHMDB)


def _read_list(list_file: str, root: str, one_col, nested: bool = False) -> List[VideoEntry]:
    """A list file: one video per line, either ``<name>`` or CRW's ``<image dir> <label path>``.

    A video listed twice is an error naming both lines (as a DAVIS sequence listed twice). Every video
    name becomes an output path, so it is checked (:func:`check_name`; ``nested``: a relative
    ``a/b`` of such names, as JHMDB's ``<action>/<video>``); a bad line raises naming ``file:line``."""
    out, seen = [], {}
    with open(list_file, encoding="utf-8-sig") as f:  # a byte-order mark is not a name
        for i, ln in enumerate(f, 1):
            cols = ln.split()
            if not cols:
                continue
            where = f"{list_file}:{i}"
            if len(cols) >= 2:
                img, lbl = (c if os.path.isabs(c) else os.path.join(root, c) for c in cols[:2])
                name = os.path.basename(os.path.normpath(img))
                check_name(name, f"video name (the last folder of {cols[0]!r})", where)
                out.append(VideoEntry(name, img, lbl))
            else:
                if nested:
                    check_relative_path(cols[0], "video name", where)
                else:
                    check_name(cols[0], "video name", where)
                out.append(one_col(cols[0]))
            # a video listed twice would be scored twice (and weigh double in the means) into one output folder
            name = out[-1].name
            if name in seen:
                raise DatasetLayoutError(f"{where}: video {name!r} is listed twice (first at line {seen[name]})")
            seen[name] = i
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
        list_candidates = (
            [list_file]
            if list_file
            else [os.path.join(root, "lists", "val_videos.txt"), os.path.join(root, "val_videos.txt")]
        )
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
                elif min(imgs, key=natural_key) not in lbls:
                    problems.append(f"{e.label_path} lacks the first frame's labels ({min(imgs, key=natural_key)}.png)")
        _fail("VIP", root, problems)
        self.videos = entries
        self.list_file = lf

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
        list_candidates = (
            [list_file] if list_file else [os.path.join(root, "jhmdb_vallist.txt"), os.path.join(root, "val_list.txt")]
        )
        lf = next((c for c in list_candidates if os.path.isfile(c)), None)
        if lf is None:
            _fail("JHMDB", root, [f"missing video list (looked for {', '.join(list_candidates)})"])

        def one_col(n: str) -> VideoEntry:
            return VideoEntry(
                n,
                os.path.join(root, "Rename_Images", n),
                os.path.join(root, "joint_positions", n, "joint_positions.mat"),
            )

        entries = _read_list(lf, root, one_col, nested=True)
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
        self.list_file = lf

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
