"""Progress of a pretraining run: a tqdm bar on a terminal, plain log lines anywhere else.

Batch jobs (stderr a file or a pipe) get one line per logging interval, as MAE's MetricLogger prints
them, instead of tqdm's carriage-return redraws::

    step 120/300 (40%) | loss 1.8123 (online 0.7712 target 0.9511 cons 0.0900) | lr 1.20e-03 \
        | momentum 0.99600 | 52.3 pairs/s | data 12% | eta 0:01:03

(one line in the log; broken here).
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Dict, Optional, TextIO

__all__ = ["ProgressLog", "format_line"]

_PARTS = (("loss_online", "online"), ("loss_target", "target"), ("loss_consistency", "cons"), ("loss_motion", "motion"))


def format_line(step: int, total: int, rec: Dict[str, float], eta_s: Optional[float]) -> str:
    """One plain progress line from a metrics record (see the module docstring)."""
    parts = " ".join(f"{short} {rec[k]:.4f}" for k, short in _PARTS if k in rec)
    line = f"step {step}/{total} ({100.0 * step / max(total, 1):.0f}%) | loss {rec['loss']:.4f}"
    line += f" ({parts})" if parts else ""
    line += f" | lr {rec['lr']:.2e} | momentum {rec['momentum']:.5f} | {rec['pairs_per_sec']:.1f} pairs/s"
    if "data_wait" in rec:
        line += f" | data {100.0 * rec['data_wait']:.0f}%"
    if eta_s is not None:
        line += f" | eta {datetime.timedelta(seconds=round(eta_s))}"
    return line


class ProgressLog:
    """``update()`` after every step, ``log(record)`` at every logging interval, ``close()`` at the end.

    ``mode``: ``"auto"`` (a bar when ``stream`` is a terminal, plain lines otherwise), ``"bar"``,
    ``"lines"`` or ``"off"``.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", mode: str = "auto", stream: TextIO = None):
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress mode must be auto, bar, lines or off, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total, self.step = mode, total, initial
        self._start_step, self._t0 = initial, time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)

    def eta_seconds(self) -> Optional[float]:
        done = self.step - self._start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * (self.total - self.step)

    def log(self, rec: Dict[str, float]) -> None:
        if self.mode == "lines":
            print(format_line(self.step, self.total, rec, self.eta_seconds()), file=self.stream, flush=True)
        elif self.bar is not None:
            post = {short: f"{rec[k]:.3f}" for k, short in _PARTS if k in rec}
            self.bar.set_postfix(
                loss=f"{rec['loss']:.4f}", **post, lr=f"{rec['lr']:.2e}", pps=f"{rec['pairs_per_sec']:.1f}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
