"""Distributed setup from torchrun's environment (gloo on CPU, nccl on CUDA) or a single process, and the
few collectives the run needs: every rank agrees on a flag, averages its logged losses, ends in sync."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["Dist", "fingerprint", "is_main_process"]


def is_main_process() -> bool:
    """Rank 0 of torchrun's environment (known before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


class Dist:
    """This process's place in the run: ``world``, ``rank``, ``device``; a single process outside torchrun."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
        if device_pref not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {device_pref!r}")
        if device_pref == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but CUDA is not available")
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def all(self, flag) -> bool:
        """Whether ``flag`` (a bool or a one-element tensor) holds on every rank."""
        return self._reduce(flag, dist.ReduceOp.MIN)

    def any(self, flag) -> bool:
        """Whether ``flag`` holds on some rank (so that every rank stops at the same step)."""
        return self._reduce(flag, dist.ReduceOp.MAX)

    def _reduce(self, flag, op) -> bool:
        if self.world == 1 and isinstance(flag, bool):
            return flag  # no device tensor, no host sync
        value = torch.as_tensor(flag, device=self.device).float().reshape(1)
        if self.world > 1:
            dist.all_reduce(value, op=op)
        return bool(value.item())

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def in_sync(self, model: torch.nn.Module) -> bool:
        """Whether every rank holds the same weights (their :func:`fingerprint`)."""
        fp = fingerprint(model).to(self.device)
        if self.world == 1:
            return True
        gathered = [torch.zeros_like(fp) for _ in range(self.world)]
        dist.all_gather(gathered, fp)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Cheap weight fingerprint used to prove all ranks ended with the same weights."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    idx = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * torch.sin(idx)).sum(), flat.abs().max()])
