"""``videomac bench data``: frame-pair loader throughput and memory on the user's own data, beside the
authors' PIL pipeline measured in the same run.

Each row runs in a fresh process (``multiprocessing`` 'spawn'), builds its DataLoader with ``workers``
worker processes, loads ``warmup`` batches untimed (worker start, first decodes), then times ``pairs``
pairs. Rows:

- ``videomac`` (and ``videomac units`` on frame-folder sources: ``frame_units=True``, each JPEG decoded
  about once for its two pairs): :class:`~videomac.pretrain.data.FramePairDataset` through
  :func:`~videomac.pretrain.loader.make_loader`, in the epoch order of
  :func:`~videomac.pretrain.loader.epoch_indices` (what ``videomac pretrain`` does); batches go through
  :func:`~videomac.pretrain.loader.batch_to_device` on a CUDA ``--device`` (normalised there, JPEGs
  decoded there with ``--gpu-decode``); on the CPU they are taken as the loader delivers them (uint8),
  since training normalises on its GPU;
- ``authors``: their ``YT18Dataset`` + ``VideoTransform`` (models/dataloader_mac.py of the VideoMAC
  repository: PIL open, ``RandomResizedCrop.get_params`` on frame 1, torchvision ``resized_crop``
  bicubic on both frames, flip, ``ToTensor``, ``Normalize``), shuffled, on every frame-folder source
  (they have no video-file reader).

Peak RSS: the largest ``VmHWM`` (peak resident set) over the row's processes -- the main one and each
worker -- read from ``/proc`` before the workers stop (Linux; elsewhere the main process only). Shared
pages (the torch libraries) count in every process that touched them.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import random
import time
import traceback
from typing import Dict, List, Optional, Sequence

import torch

from videomac.bench.common import maxrss_mb

__all__ = ["AuthorsPairs", "bench_data", "format_table", "peak_rss_mb"]


class AuthorsPairs(torch.utils.data.Dataset):
    """The authors' YT18Dataset with their VideoTransform (models/dataloader_mac.py), as released:
    every consecutive pair of every frame folder under ``root``."""

    def __init__(self, root: str, input_size: int = 224, scale=(0.2, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        import torchvision.transforms as transforms

        self.size = (input_size, input_size)
        self.scale, self.ratio = scale, ratio
        self.normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        self.to_tensor = transforms.ToTensor()
        self.frames = []
        for subdir in sorted(glob.glob(os.path.join(root, "*"))):
            frames = sorted(glob.glob(os.path.join(subdir, "*")))
            self.frames += [(frames[i], frames[i + 1]) for i in range(len(frames) - 1)]
        if not self.frames:
            raise ValueError(f"no frame folders under {root} (expected {root}/<video>/<frame>)")

    def __len__(self) -> int:
        return len(self.frames)

    def transform(self, img1, img2):
        import torchvision.transforms as transforms
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        i, j, h, w = transforms.RandomResizedCrop.get_params(img1, self.scale, self.ratio)
        img1 = F.resized_crop(img1, i, j, h, w, self.size, InterpolationMode.BICUBIC)
        img2 = F.resized_crop(img2, i, j, h, w, self.size, InterpolationMode.BICUBIC)
        if random.random() < 0.5:
            img1, img2 = F.hflip(img1), F.hflip(img2)
        return self.normalize(self.to_tensor(img1)), self.normalize(self.to_tensor(img2))

    def __getitem__(self, idx):
        from PIL import Image

        p1, p2 = self.frames[idx]
        return self.transform(Image.open(p1), Image.open(p2))


def _vmhwm_mb(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> List[int]:
    out = []
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def peak_rss_mb() -> Dict[str, float]:
    """Peak resident set (MB) of this process and of each of its child processes (DataLoader workers)."""
    me = os.getpid()
    main = _vmhwm_mb(me) or maxrss_mb()
    workers = [r for r in (_vmhwm_mb(p) for p in _children(me)) if r is not None]
    return dict(main=main, workers=workers, max=max([main] + workers))


def _is_frame_folders(path: str) -> bool:
    from videomac.media import is_image, is_video

    if not os.path.isdir(path):
        return False
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.isdir(p):
            return any(is_image(n) for n in os.listdir(p))
        if is_video(name):
            return False
    return False


def _row(
    kind: str,
    source: str,
    workers: int,
    pairs: int,
    batch_size: int,
    input_size: int,
    warmup: int,
    seed: int,
    gpu_decode: bool,
    device: str,
    frame_units: bool = False,
) -> Dict:
    torch.manual_seed(seed)
    random.seed(seed)
    build = time.perf_counter()
    if kind == "authors":
        ds = AuthorsPairs(source, input_size)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        describe = f"{len(ds)} pairs"
    else:
        from videomac.pretrain.data import FramePairDataset
        from videomac.pretrain.loader import EpochSampler, epoch_indices, make_loader

        ds = FramePairDataset(source, input_size=input_size, gpu_decode=gpu_decode, seed=seed, frame_units=frame_units)
        sampler = EpochSampler()
        loader = make_loader(ds, sampler, batch_size, workers, seed, device=torch.device(device))
        workers = loader.num_workers
        need = (warmup + 1) * batch_size + pairs
        order: List[int] = []
        epoch = 0
        while len(order) < need:
            order += epoch_indices(ds, epoch, seed, batch_size=batch_size, num_workers=workers)
            epoch += 1
        sampler.indices = order[:need]
        describe = ds.describe()
    build = time.perf_counter() - build
    from videomac.pretrain.loader import batch_to_device

    n, t0, seen = 0, None, 0
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if kind == "authors" or (torch.device(device).type == "cpu" and not gpu_decode):
            f1 = batch[0].to(device)  # videomac: uint8, normalised on the training device (not timed on CPU)
        else:
            f1, f2 = batch_to_device(batch, device)
        seen += 1
        if seen == warmup:
            t0 = time.perf_counter()
        elif seen > warmup:
            n += f1.shape[0]
            if n >= pairs:
                break
    dt = time.perf_counter() - (t0 or time.perf_counter())
    rss = peak_rss_mb()
    del it, loader
    return dict(
        loader=kind + (" units" if frame_units else ""),
        data=source,
        workers=workers,
        pairs=n,
        seconds=dt,
        pairs_per_s=n / max(dt, 1e-9),
        pairs_per_s_per_worker=n / max(dt, 1e-9) / max(1, workers),
        peak_rss_mb=rss["max"],
        main_rss_mb=rss["main"],
        worker_rss_mb=rss["workers"],
        build_s=build,
        dataset=describe,
    )


def _child(queue, kwargs) -> None:
    try:
        torch.set_num_threads(1)
        queue.put(_row(**kwargs))
    except BaseException as e:  # noqa: BLE001  (reported in the row)
        queue.put(
            dict(
                loader=kwargs["kind"],
                data=kwargs["source"],
                error=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc(),
            )
        )


def bench_data(
    data: Sequence[str],
    workers: Optional[int] = None,
    pairs: int = 512,
    batch_size: int = 32,
    input_size: int = 224,
    warmup: Optional[int] = None,
    reference: bool = True,
    gpu_decode: bool = False,
    device: str = "cpu",
    seed: int = 0,
    isolate: bool = True,
    units: bool = True,
) -> Dict:
    """Loader pairs/s and peak RSS for each source in ``data`` (videomac's loader), plus the authors'
    pipeline on each frame-folder source if ``reference``, and videomac's loader with ``frame_units=True``
    on each frame-folder source if ``units``. ``workers=None``: the default worker count
    (:func:`videomac.pretrain.loader.default_num_workers`); the authors' rows use the same number."""
    from videomac.pretrain.loader import default_num_workers

    w = default_num_workers() if workers is None or workers < 0 else int(workers)
    warm = warmup if warmup is not None else max(1, w)
    rows_to_run = []
    for src in data:
        if not os.path.exists(src):
            raise FileNotFoundError(f"bench data: {src} not found")
        rows_to_run.append(("videomac", src, False))
        if _is_frame_folders(src):
            if units and not gpu_decode:
                rows_to_run.append(("videomac", src, True))
            if reference:
                rows_to_run.append(("authors", src, False))
    rows = []
    for kind, src, frame_units in rows_to_run:
        kw = dict(
            kind=kind,
            source=src,
            workers=w,
            pairs=pairs,
            batch_size=batch_size,
            input_size=input_size,
            warmup=warm,
            seed=seed,
            gpu_decode=gpu_decode,
            device=device,
            frame_units=frame_units,
        )
        if isolate:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(q, kw))
            p.start()
            row = q.get()
            p.join()
        else:
            row = _row(**kw)
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    ours = [r for r in ok if r["loader"] == "videomac"]
    ref = [a for a in ok if a["loader"] == "authors"]
    for r in ok:  # speed relative to the authors' pipeline measured in this run (the first frame folder)
        if ref:
            r["vs_authors"] = r["pairs_per_s"] / ref[0]["pairs_per_s"]
    summary = dict(
        pairs_per_s=ours[0]["pairs_per_s"] if ours else None,
        peak_rss_mb=max((r["peak_rss_mb"] for r in ok), default=None),
        workers=w,
        input_size=input_size,
        batch_size=batch_size,
        rows=rows,
        cpu=f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else None,
    )
    return summary


def format_table(result: Dict) -> str:
    head = ["loader", "data", "workers", "pairs/s", "per worker", "vs authors", "peak RSS MB", "worker RSS MB"]
    lines = [head]
    for r in result["rows"]:
        if "error" in r:
            lines.append([r["loader"], os.path.basename(os.path.normpath(r["data"])), "error: " + r["error"][:60]])
            continue
        wr = r["worker_rss_mb"]
        lines.append(
            [
                r["loader"],
                os.path.basename(os.path.normpath(r["data"])),
                str(r["workers"]),
                f"{r['pairs_per_s']:.1f}",
                f"{r['pairs_per_s_per_worker']:.1f}",
                f"{r['vs_authors']:.2f}x" if "vs_authors" in r else "-",
                f"{r['peak_rss_mb']:.0f}",
                f"{max(wr):.0f}" if wr else "-",
            ]
        )
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in lines)


def to_json(result: Dict) -> str:
    """The result as one JSON line (the command's last line)."""
    slim = {k: v for k, v in result.items() if k != "rows"}
    slim["rows"] = [{k: v for k, v in r.items() if k not in ("traceback", "dataset")} for r in result["rows"]]
    return json.dumps(slim, default=str)
