"""When a run stops early: SIGINT / SIGTERM (also sent to the whole process group: the DataLoader workers
ignore them) or ``--stop-after`` end the run after the current step, with a checkpoint; a second Ctrl-C
aborts at once. Every rank stops at the same step."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Dict, Iterator, Optional

from videomac.pretrain.checkpoint import close_inherited_locks

__all__ = ["StopRequest", "ignore_stop_signals"]


class StopRequest:
    """A stop asked for by a signal or by ``stop_after`` steps; ``run.step`` (the run's current step) is
    read for the message a signal prints."""

    def __init__(self, run, stop_after: Optional[int] = None, main: bool = True) -> None:
        self.run, self.stop_after, self.main = run, stop_after, main
        self.requested = False
        self.signal: Optional[int] = None

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopRequest]:
        """SIGINT and SIGTERM to this object while the block runs (main thread only), then the caller's
        handlers again."""
        previous: Dict = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.requested, self.signal = True, signum
        if self.main:
            again = " (Ctrl-C again to abort without one)" if signum == signal.SIGINT else ""
            print(
                f"\n{signal.Signals(signum).name}: stopping after step {self.run.step + 1} with a checkpoint{again}",
                file=sys.stderr,
                flush=True,
            )

    def due(self, steps_run: int, env) -> bool:
        """Whether to stop now, ``steps_run`` steps into this process's run; agreed by every rank of ``env``."""
        stop = self.requested or (self.stop_after is not None and steps_run >= self.stop_after)
        return env.any(stop)

    @property
    def signal_name(self) -> Optional[str]:
        return signal.Signals(self.signal).name if self.signal else None

    def reason(self) -> str:
        if self.signal_name:
            return f"{self.signal_name} received"
        if self.requested:
            return "stop requested by another process"
        return f"--stop-after {self.stop_after} reached"


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM sent to the whole process group: the main process
    stops the run (with a checkpoint) and shuts them down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    close_inherited_locks()  # the run folder's lock is the main process's: it must end with it
