"""Where a run is: its step, the position in the epoch and every rank's RNG, saved with the weights so a
resumed run continues the same sample, mask and drop-path streams.

The data's randomness is not in it: every item's crop and flip come from its own seed, a function of
(seed, epoch, rank, position in the epoch), so the sample stream depends neither on the DataLoader's
worker count nor on where a run stopped. What is saved: the position (``epoch``, ``micro_done``), the
worker count the epoch order of units is dealt to (``order_workers``: video files, ``frame_units``) and
each rank's global RNG (masks, drop path).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["RunState", "rng_state", "set_rng_state", "seed_everything"]


@dataclass
class RunState:
    """The run's position: optimizer ``step``, ``epoch``, ``micro_done`` micro-batches of that epoch, and
    ``order_workers``. :meth:`state_dict` gathers every rank's RNG (a collective: call it on every rank)."""

    step: int = 0
    epoch: int = 0
    micro_done: int = 0
    order_workers: int = 1
    saved_step: Optional[int] = field(default=None, repr=False)  # of the checkpoint.pt this run wrote or resumed from
    world: int = field(default=1, repr=False)
    rank: int = field(default=0, repr=False)

    def end_epoch_if_complete(self, usable: int) -> bool:
        """Start the next epoch once this one's ``usable`` micro-batches are done; whether it did."""
        if self.micro_done < usable:
            return False
        self.epoch, self.micro_done = self.epoch + 1, 0
        return True

    def state_dict(self) -> Dict:
        rng = [rng_state()]
        if self.world > 1:  # every rank's own RNG (masks, drop path), so each resumes its stream
            rng = [None] * self.world
            torch.distributed.all_gather_object(rng, rng_state())
        return dict(
            step=self.step,
            epoch=self.epoch,
            micro_done=self.micro_done,
            order_workers=self.order_workers,
            rng=rng,
            data_rng="per-item seed (seed, epoch, rank, position)",
            world_size=self.world,
        )

    def load_state_dict(self, ck: Dict, source: str = "the checkpoint") -> Optional[str]:
        """Restore the position and this rank's RNG; returns a note when the RNG streams cannot continue
        (a checkpoint of another number of processes)."""
        self.step, self.epoch, self.micro_done = ck["step"], ck["epoch"], ck["micro_done"]
        self.order_workers = int(ck.get("order_workers", self.order_workers))
        rng = ck.get("rng")
        if isinstance(rng, dict) and ck.get("world_size", 1) == self.world == 1:  # format 1: rank 0 only
            set_rng_state(rng)
        elif isinstance(rng, list) and len(rng) == self.world:
            set_rng_state(rng[self.rank])
        else:
            return (
                f"note: {source} was written by {ck.get('world_size', 1)} process(es), this run has "
                f"{self.world}: the RNG streams restart (the run is not bit-exact)"
            )
        return None


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and Python's global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> Dict:
    """This process's RNG states as tensors and plain values (weights-only loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(
            kind=kind,
            keys=torch.from_numpy(keys.astype(np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(gauss),
        ),
        python=dict(version=version, state=torch.tensor(mt, dtype=torch.int64), gauss_next=gauss_next),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore :func:`rng_state` (or format 1's raw numpy and python tuples)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)
    p = state["python"]
    if isinstance(p, dict):
        p = (p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"])
    random.setstate(p)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
