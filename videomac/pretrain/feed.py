"""The run's batches: the dataset of its settings, each item loaded under its own seed (see
:mod:`videomac.pretrain.state`), this rank's full batches of each epoch, and a DataLoader whose workers
ignore stop signals; a failure to load becomes a one-line :class:`~videomac.pretrain.step.DataLoadingError`."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.loader import EpochSampler, batch_to_device, epoch_indices, make_loader, shutdown_workers
from videomac.pretrain.schedule import RunPlan
from videomac.pretrain.state import RunState
from videomac.pretrain.step import DataLoadingError
from videomac.pretrain.stop import ignore_stop_signals

__all__ = ["Feed", "build_dataset", "uses_units"]


def build_dataset(cfg: PretrainConfig, device: torch.device) -> FramePairDataset:
    return FramePairDataset(
        cfg.data,
        input_size=cfg.input_size,
        gap=cfg.gap,
        pairs_per_video=cfg.pairs_per_video,
        synthetic_videos=cfg.synthetic_videos,
        synthetic_frames=cfg.synthetic_frames,
        video_short_side=cfg.video_short_side,
        seed=cfg.seed,
        gpu_decode=cfg.gpu_decode and device.type == "cuda",
        frame_units=cfg.frame_units,
    )


def uses_units(dataset) -> bool:
    """Whether the dataset's items come in units decoded forward (video files, ``frame_units``)."""
    units = dataset.unit_ranges() if hasattr(dataset, "unit_ranges") else None
    return units is not None and any(hi - lo > 1 for lo, hi in units)


class SeededItems(torch.utils.data.Dataset):
    """``dataset[index]`` under the item's own seed (the caller's RNG is left as it was), for keys
    ``(index, seed)`` from a seeded :class:`~videomac.pretrain.loader.EpochSampler`. Inputs the dataset
    skips while loading (recorded in its ``skipped`` by this process, a DataLoader worker or the main
    one) are appended to ``log``, so the run can count them whichever process met them."""

    def __init__(self, dataset, log: Optional[str] = None) -> None:
        self.dataset, self.log = dataset, log
        self._reported = set(getattr(dataset, "skipped", {}))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            item = self.dataset[index]
        skipped = getattr(self.dataset, "skipped", {})
        if len(skipped) > len(self._reported):  # it only grows: new entries are at its end
            new = [(k, v) for k, v in list(skipped.items()) if k not in self._reported]
            self._reported.update(k for k, _ in new)
            if self.log and new:
                with contextlib.suppress(OSError), open(self.log, "a") as f:
                    f.write("".join(json.dumps({"path": k, "reason": v}) + "\n" for k, v in new))
        return item


def _epoch_plan(dataset, seed: int, world: int, rank: int, batch_size: int, workers: int, usable: int):
    """This rank's full batches of each epoch, with the epoch order dealt to ``workers`` (the resumed run's).
    A closure of plain values: the loader holds it through its sampler, and a cycle back to the run's
    objects would keep its workers alive after the run."""

    def plan(epoch: int) -> List[int]:
        # video files / frame folders: units decoded forward once per worker (videomac.pretrain.loader)
        return epoch_indices(dataset, epoch, seed, world, rank, batch_size, workers)[: usable * batch_size]

    return plan


class Feed:
    """Batches of ``dataset`` for this rank (``env``: a :class:`~videomac.pretrain.distributed.Dist`), on
    its device; skipped inputs are appended to ``skipped_log``. One loader iterator spans every epoch
    left, so its workers load the next epoch's first batches while this one ends."""

    def __init__(self, dataset, cfg: PretrainConfig, env, skipped_log: Optional[str]) -> None:
        self.dataset, self.cfg, self.env = dataset, cfg, env
        self.sampler = EpochSampler(seed=cfg.seed, rank=env.rank, seeded=True)
        # workers (None: from the CPU count), persistent + prefetching, pinned memory on CUDA, uint8 batches
        self.loader = make_loader(
            SeededItems(dataset, skipped_log),
            self.sampler,
            cfg.batch_size,
            cfg.num_workers,
            cfg.seed,
            device=env.device,
            worker_init_fn=ignore_stop_signals,
        )

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def batches(
        self, run: RunState, plan: RunPlan, failure: Callable[[BaseException], str]
    ) -> Iterator[Tuple[Tuple[torch.Tensor, torch.Tensor], float]]:
        """``((frame1, frame2), seconds waited)`` on the device from where ``run`` is through the run's last
        epoch; a load that fails raises :class:`DataLoadingError` (``failure(e)``: its message)."""
        cfg, env = self.cfg, self.env
        epochs = _epoch_plan(
            self.dataset, cfg.seed, env.world, env.rank, cfg.batch_size, run.order_workers, plan.epoch_micro_batches
        )
        epoch = run.epoch
        self.sampler.set_span(epochs, epoch, run.micro_done * cfg.batch_size, max(plan.last_epoch, epoch + 1))
        batches, t_wait = iter(self.loader), time.perf_counter()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (RuntimeError, OSError) as e:
                raise DataLoadingError(failure(e)) from e
            # uint8 to the device, normalised there (JPEGs decoded there with gpu_decode)
            frames = batch_to_device(batch, env.device)
            yield frames, time.perf_counter() - t_wait
            t_wait = time.perf_counter()

    def close(self) -> None:
        shutdown_workers(self.loader)
