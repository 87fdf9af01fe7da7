"""What a run reports (rank 0 writes): one ``metrics.jsonl`` record per logging interval (also to
TensorBoard when installed, and to the progress bar), the inputs skipped (any process's skip log),
reconstruction figures, and at the end ``summary.json`` with the loss curve and the exported encoder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

import torch

from videomac.pretrain.checkpoint import save_encoder
from videomac.pretrain.config import ENCODER, METRICS, SUMMARY
from videomac.pretrain.curves import save_loss_curve
from videomac.pretrain.progress import ProgressLog
from videomac.pretrain.visualize import save_reconstruction_figure

__all__ = ["MetricsLog", "SkipLog", "save_figure", "write_summary"]


class SkipLog:
    """Inputs skipped so far: at dataset construction (``dataset.skipped``), and while loading (the lines
    any process appended to ``path``)."""

    def __init__(self, path: str, dataset) -> None:
        self.path, self.dataset = path, dataset

    def read(self) -> Dict[str, str]:
        out = dict(getattr(self.dataset, "skipped", {}))
        try:
            with open(self.path) as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        rec = json.loads(line)
                        out.setdefault(rec["path"], rec["reason"])
        except OSError:
            pass
        return out

    def summary(self, main: bool) -> Dict:
        skipped = self.read() if main else {}
        return dict(skipped_count=len(skipped), skipped=skipped)


class _Window:
    """What one logging interval accumulates: summed losses (on the device), micro-batches, pairs, wait."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.micro, self.pairs, self.waited, self.t0 = 0, 0, 0.0, time.perf_counter()


class MetricsLog:
    """The losses of each logging interval, averaged over its micro-batches and the ranks (a collective:
    every rank logs), and the run's throughput. Rank 0 (``main``) writes them to ``out_dir``."""

    def __init__(self, out_dir: str, env, skips: SkipLog, total_steps: int, step: int, title: str, progress: bool):
        self.out_dir, self.env, self.skips = out_dir, env, skips
        self.file = open(os.path.join(out_dir, METRICS), "a") if env.main else None
        self.tb = _tensorboard(out_dir) if env.main else None
        # a bar on a terminal; one plain line per logging interval in batch jobs (stderr a file or pipe)
        self.bar = ProgressLog(total_steps, step, title, mode="auto" if (env.main and progress) else "off")
        self.last_loss: Optional[float] = None  # the last logged mean loss (summary.json)
        self.last_batch: Optional[Tuple] = None  # (frame1, frame2, outputs) of the last micro-batch (figures)
        self.run_pairs, self.run_t0 = 0, time.perf_counter()
        self.window = _Window()

    def micro_batch(self, frames: Tuple[torch.Tensor, torch.Tensor], out: Dict, waited: float) -> None:
        """Add one micro-batch's losses (summed on the device: read once per interval) and pairs."""
        w = self.window
        for k, v in out.items():
            if k.startswith("loss"):
                w.sums[k] = w.sums.get(k, 0.0) + v.detach().double()
        pairs = frames[0].shape[0] * self.env.world
        w.micro, w.pairs, w.waited = w.micro + 1, w.pairs + pairs, w.waited + waited
        self.run_pairs += pairs
        self.last_batch = (frames[0], frames[1], out)

    def interval(self, step: int, epoch: int, lr: float, momentum: float) -> None:
        """Write the record of the interval ending at optimizer step ``step`` and start a new one."""
        w = self.window
        elapsed = max(time.perf_counter() - w.t0, 1e-9)
        keys = sorted(w.sums)
        n = max(1, w.micro)
        means = torch.stack([torch.as_tensor(w.sums[k], dtype=torch.float64, device=self.env.device) / n for k in keys])
        means = self.env.mean(means).cpu()
        rec = dict(step=step, epoch=epoch)
        rec.update({k: float(v) for k, v in zip(keys, means)})
        self.last_loss = rec.get("loss")
        rec.update(lr=lr, momentum=momentum, pairs_per_sec=w.pairs / elapsed, data_wait=min(1.0, w.waited / elapsed))
        if self.file is not None:
            rec["skipped"] = len(self.skips.read())  # inputs skipped so far (their list: summary.json)
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
            if self.tb is not None:
                for k, v in rec.items():
                    if k not in ("step", "epoch"):
                        self.tb.add_scalar(f"pretrain/{k}", v, step)
            self.bar.log(rec)
        self.window = _Window()  # timed from here: the next interval's rate leaves out this logging

    def figure(self, name: str, patch_size: int, norm_pix_loss: bool) -> str:
        """The reconstruction figure of the last micro-batch, as ``name`` in the run folder."""
        return save_figure(os.path.join(self.out_dir, name), self.last_batch, patch_size, norm_pix_loss)

    def wall_time(self) -> float:
        return time.perf_counter() - self.run_t0

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def save_figure(path: str, batch: Tuple, patch_size: int, norm_pix_loss: bool) -> str:
    """The reconstruction figure of a ``(frame1, frame2, outputs)`` micro-batch."""
    frame1, frame2, out = batch
    save_reconstruction_figure(
        path,
        frame1.float().cpu(),
        frame2.float().cpu(),
        out["mask"].cpu(),
        out["pred_online"].detach().float().cpu(),
        out["pred_target"].detach().float().cpu(),
        patch_size=patch_size,
        norm_pix_loss=norm_pix_loss,
    )
    return path


def write_summary(summary: Dict, log: MetricsLog, cfg, model) -> None:
    """Rank 0's end of a finished run: the last figure, the loss curve, the encoder (``cfg.export``), and
    ``summary.json`` (``summary`` gains their paths)."""
    out_dir = log.out_dir
    if log.last_batch is not None:
        summary["figure"] = log.figure("reconstruction.png", model.patch_size, cfg.norm_pix_loss)
    metrics = os.path.join(out_dir, METRICS)
    if os.path.exists(metrics) and os.path.getsize(metrics):
        summary["loss_curve"] = save_loss_curve(metrics, os.path.join(out_dir, "loss.png"), cfg.norm_pix_loss)
    if cfg.export:
        summary["encoder"] = os.path.join(out_dir, ENCODER)
        save_encoder(model, summary["encoder"])
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=2)
    if summary["skipped_count"]:
        print(
            f"skipped {summary['skipped_count']} unusable input(s); see {os.path.join(out_dir, SUMMARY)}",
            file=sys.stderr,
        )


def _tensorboard(out_dir: str):
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(out_dir, "tb"))
