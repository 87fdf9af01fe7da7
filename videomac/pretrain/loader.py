"""Feeding the training device: the epoch's order, the DataLoader, and the copy to the device.

- :func:`epoch_indices`: this rank's items of one epoch, deterministic in ``(seed, epoch)`` (a run
  resumes by slicing the same list at its position). Without video files it is a plain permutation.
  With video files (decoded by unit, see :class:`~videomac.pretrain.data.FramePairDataset`) the units
  are permuted, dealt to the DataLoader workers in whole batches (batch ``k`` goes to worker
  ``k % workers``, as the DataLoader dispatches), and each worker serves ``interleave`` units at a time,
  each in ascending order, so a worker decodes each frame once and a batch mixes many units.
- :func:`make_loader`: a DataLoader with the defaults that keep a GPU fed: workers from the CPU count,
  persistent workers, prefetching, pinned memory on CUDA, uint8 batches.
- :func:`batch_to_device`: the batch to the device (non-blocking), JPEGs decoded there when the dataset
  left them encoded, then :func:`~videomac.pretrain.data.normalize_frames`: the one place pixels become
  model inputs.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from videomac.pretrain.data import EncodedPair, normalize_frames

__all__ = [
    "DEFAULT_INTERLEAVE",
    "EpochSampler",
    "PairBatch",
    "batch_to_device",
    "collate_pairs",
    "default_num_workers",
    "epoch_indices",
    "item_seed",
    "make_loader",
    "shutdown_workers",
]

DEFAULT_INTERLEAVE = 8


def default_num_workers(world_local: Optional[int] = None) -> int:
    """DataLoader workers per training process: the CPUs this process may use, shared by the processes
    of this node (``LOCAL_WORLD_SIZE``), less one for the training process itself; at least 1, at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    local = world_local or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(32, cpus // max(1, local) - 1))


def _permutation(n: int, epoch: int, seed: int) -> List[int]:
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_indices(
    dataset,
    epoch: int,
    seed: int,
    world: int = 1,
    rank: int = 0,
    batch_size: int = 1,
    num_workers: int = 0,
    interleave: int = DEFAULT_INTERLEAVE,
) -> List[int]:
    """This rank's share of epoch ``epoch``: ``ceil(len / world)`` indices (padded so all ranks match).

    Deterministic in all arguments; a resumed run slices the same list at its position (with the same
    ``batch_size`` and worker count). Without unit ranges (``dataset.unit_ranges()`` missing, ``None`` or
    all single items) it is a seeded permutation split round-robin over ranks, whatever the workers.
    With them, the units are permuted and concatenated, each rank takes a contiguous share,
    each worker (``num_workers``, at least 1) a contiguous part of it in whole batches (batch ``k`` is
    loaded by worker ``k % workers``, as the DataLoader dispatches), and each worker's part is served
    as ``interleave`` units at a time, a random one of them advancing by one pair at each position: a
    unit's pairs come in ascending order, so its process decodes each frame once, and a batch mixes
    pairs of about ``interleave`` units.
    """
    n = len(dataset)
    per_rank = math.ceil(n / world)
    units = dataset.unit_ranges() if hasattr(dataset, "unit_ranges") else None
    if units is None or all(hi - lo == 1 for lo, hi in units):
        perm = _permutation(n, epoch, seed)
        perm += perm[: per_rank * world - n]
        return perm[rank::world]
    order = [units[u] for u in _permutation(len(units), epoch, seed)]
    flat = [i for lo, hi in order for i in range(lo, hi)]
    flat += flat[: per_rank * world - n]
    mine = flat[rank * per_rank : (rank + 1) * per_rank]
    workers = max(1, int(num_workers))
    B = max(1, int(batch_size))
    full = len(mine) // B
    streams, at = [], 0
    for w in range(workers):
        size = len(range(w, full, workers)) * B
        g = torch.Generator().manual_seed((seed * 100003 + epoch) * 1009 + rank * 131 + w + 1)
        streams.append(_interleaved(mine[at : at + size], interleave, g))
        at += size
    out: List[int] = []
    for k in range(full):
        s = streams[k % workers]
        out += [next(s) for _ in range(B)]
    return out + mine[at:]  # the last, partial batch


def _runs(items: Sequence[int]) -> List[List[int]]:
    """``items`` cut into runs of consecutive indices."""
    runs: List[List[int]] = []
    for x in items:
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return runs


def _interleaved(items: Sequence[int], width: int, g: torch.Generator) -> Iterator[int]:
    """The runs of ``items`` served ``width`` at a time: at each position a random open run gives its
    next index; an exhausted run is replaced by the next one."""
    pending = iter(_runs(items))
    open_runs = [iter(r) for r in (next(pending, None) for _ in range(max(1, width))) if r is not None]
    while open_runs:
        j = int(torch.randint(len(open_runs), (1,), generator=g))
        x = next(open_runs[j], None)
        if x is None:
            nxt = next(pending, None)
            if nxt is None:
                open_runs.pop(j)
            else:
                open_runs[j] = iter(nxt)
            continue
        yield x


def item_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed of one item's random crop and flip: a hash of where it is in the run."""
    key = f"{seed}/{epoch}/{rank}/{position}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class EpochSampler(torch.utils.data.Sampler):
    """This rank's items from position ``start`` of epoch ``epoch`` to the end of epoch ``last - 1``, each
    epoch's indices from ``plan(epoch)`` (:meth:`set_span`), or a fixed list (``indices``). One iterator
    spans the epochs, so the DataLoader's persistent workers (with their decoded-video caches) prefetch
    across epoch ends instead of starting every epoch empty; a resumed run starts mid-epoch.

    ``seeded``: yields ``(index, item seed)`` (:func:`item_seed`), for a dataset that sets each item's
    seed around ``dataset[index]``, so the sample stream depends neither on the worker count nor on
    where a run stopped; otherwise plain indices.
    """

    def __init__(self, indices: Optional[List[int]] = None, seed: int = 0, rank: int = 0, seeded: bool = False):
        self.seed, self.rank, self.seeded = seed, rank, seeded
        self.indices = list(indices or [])

    @property
    def indices(self) -> List[int]:
        return self.plan(self.epoch)

    @indices.setter
    def indices(self, indices: List[int]) -> None:
        fixed = list(indices)
        self.set_span(lambda epoch: fixed, 0, 0, 1)

    def set_span(self, plan: Callable[[int], List[int]], epoch: int, start: int, last: int) -> None:
        self.plan, self.epoch, self.start, self.last = plan, epoch, start, last

    def __iter__(self) -> Iterator:
        seed, rank, seeded = self.seed, self.rank, self.seeded
        for epoch in range(self.epoch, self.last):
            start = self.start if epoch == self.epoch else 0
            indices = self.plan(epoch)
            for k in range(start, len(indices)):
                yield (indices[k], item_seed(seed, epoch, rank, k)) if seeded else indices[k]

    def __len__(self) -> int:
        return len(self.plan(self.epoch)) * (self.last - self.epoch) - self.start  # every epoch is as long


class PairBatch:
    """A collated batch holding some pairs still JPEG-encoded (``gpu_decode=True``).

    ``frame1``/``frame2``: uint8 ``(B, 3, H, W)``, zeros at the encoded positions; ``encoded``: the
    positions and their :class:`~videomac.pretrain.data.EncodedPair`. DataLoader pins it via
    :meth:`pin_memory`.
    """

    def __init__(self, frame1: torch.Tensor, frame2: torch.Tensor, encoded: List[Tuple[int, EncodedPair]]):
        self.frame1, self.frame2, self.encoded = frame1, frame2, encoded

    def pin_memory(self) -> PairBatch:
        return PairBatch(self.frame1.pin_memory(), self.frame2.pin_memory(), self.encoded)

    def __len__(self) -> int:
        return self.frame1.shape[0]


def collate_pairs(items: Sequence):
    """Collate dataset items: ``(frame1, frame2)`` stacks, or a :class:`PairBatch` if any is encoded."""
    encoded = [(n, x) for n, x in enumerate(items) if isinstance(x, EncodedPair)]
    if not encoded:
        return torch.utils.data.default_collate(list(items))
    h, w = encoded[0][1].size
    f1 = torch.zeros((len(items), 3, h, w), dtype=torch.uint8)
    f2 = torch.zeros_like(f1)
    for n, x in enumerate(items):
        if not isinstance(x, EncodedPair):
            if x[0].dtype != torch.uint8:
                raise ValueError("collate_pairs: gpu_decode needs uint8 items (normalize=False)")
            f1[n], f2[n] = x
    return PairBatch(f1, f2, encoded)


def batch_to_device(batch, device, non_blocking: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(frame1, frame2)`` of a loader batch on ``device``, float32 and ImageNet-normalised.

    uint8 batches are copied as uint8 (four times less to move than float32) and normalised there; a
    :class:`PairBatch` has its encoded pairs decoded on ``device`` (``torchvision.io.decode_jpeg``,
    batched: on the GPU for a CUDA device, on the CPU otherwise) and cropped/resized there.
    """
    device = torch.device(device)
    if isinstance(batch, PairBatch):
        f1 = batch.frame1.to(device, non_blocking=non_blocking)
        f2 = batch.frame2.to(device, non_blocking=non_blocking)
        if batch.encoded:
            from videomac.pretrain.decode import decode_jpeg_crops

            pos = [n for n, _ in batch.encoded]
            pairs = [p for _, p in batch.encoded]
            data = [p.jpeg1 for p in pairs] + [p.jpeg2 for p in pairs]
            crops = [p.crop for p in pairs] * 2
            flips = [p.flip for p in pairs] * 2
            out = decode_jpeg_crops(data, crops, flips, tuple(f1.shape[-2:]), device)
            idx = torch.tensor(pos, device=device)
            f1[idx], f2[idx] = out[: len(pairs)], out[len(pairs) :]
        return normalize_frames(f1), normalize_frames(f2)
    frame1, frame2 = batch
    return (
        normalize_frames(frame1.to(device, non_blocking=non_blocking)),
        normalize_frames(frame2.to(device, non_blocking=non_blocking)),
    )


def make_loader(
    dataset,
    sampler: torch.utils.data.Sampler,
    batch_size: int,
    num_workers: Optional[int] = None,
    seed: int = 0,
    device: Optional[torch.device] = None,
    prefetch_factor: int = 4,
    drop_last: bool = True,
    worker_init_fn=None,
) -> torch.utils.data.DataLoader:
    """The pretraining DataLoader: ``num_workers`` (``None`` or negative: :func:`default_num_workers`),
    persistent workers prefetching ``prefetch_factor`` batches each, pinned memory when ``device`` (default:
    CUDA if available) is CUDA, :func:`collate_pairs`. Turns on unit decoding (``video_units``) of the
    dataset (or of the dataset it wraps, ``dataset.dataset``), which :func:`epoch_indices` orders for."""
    if num_workers is None or num_workers < 0:
        num_workers = default_num_workers()
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inner = getattr(dataset, "dataset", dataset)
    if hasattr(inner, "video_units"):
        inner.video_units = True
    kw = dict(persistent_workers=True, prefetch_factor=prefetch_factor) if num_workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_pairs,
        pin_memory=torch.device(device).type == "cuda",
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # epoch (new iterator mid-epoch) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=worker_init_fn,
        **kw,
    )


def shutdown_workers(loader: torch.utils.data.DataLoader, timeout: float = 10.0) -> None:
    """Stop ``loader``'s worker processes (persistent or not) and forget its iterator, whatever state the
    run ended in (an error, a signal, a dead worker): each worker is asked to exit, then killed after
    ``timeout`` seconds. Needed because the training workers ignore SIGTERM (the main process owns the
    stop), so the ``terminate()`` of the DataLoader's and multiprocessing's own exit paths cannot end them
    and the process would never exit."""
    it = getattr(loader, "_iterator", None)
    loader._iterator = None
    workers = list(getattr(it, "_workers", []))
    if it is not None and hasattr(it, "_shutdown_workers"):
        try:
            it._shutdown_workers()
        except Exception:  # a worker that died mid-queue: kill whatever is left below
            pass
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
        if w.is_alive():
            w.kill()
            w.join(5.0)
