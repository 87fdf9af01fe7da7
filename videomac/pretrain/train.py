"""The VideoMAC pretraining loop: AMP, DDP through torchrun, gradient accumulation, atomic
checkpoints with exact resume, JSONL metrics, reconstruction figures, dense encoder export.

Exact resume with any number of DataLoader workers: every item's random crop and flip come from its own
seed, a function of (seed, epoch, rank, position in the epoch) set around ``dataset[i]`` in whichever
process loads it, so the sample stream depends neither on the worker count nor on where a run stopped;
the position in the epoch (``epoch``, ``micro_done``), the worker count the epoch order of units is
dealt to (``order_workers``: video files, ``frame_units``) and each rank's global RNG (masks, drop
path) are in the checkpoint. SIGINT and SIGTERM (also sent to the whole process group: the workers ignore them)
stop the run at the end of the current step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from videomac.files import atomic_file, stale_temporaries
from videomac.masking import check_visible, grid_size
from videomac.models.names import check_model_name
from videomac.pretrain.checkpoint import (
    FORMAT_VERSION,
    build_model,
    check_progress,
    close_inherited_locks,
    earlier_run,
    load_latest,
    run_lock,
    save_encoder,
    write_checkpoint,
)
from videomac.pretrain.config import (
    CHECKPOINT,
    CONFIG,
    ENCODER,
    METRICS,
    SKIPPED,
    SUMMARY,
    PretrainConfig,
    check_config,
)
from videomac.pretrain.curves import save_loss_curve
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.loader import EpochSampler, batch_to_device, epoch_indices, make_loader, shutdown_workers
from videomac.pretrain.progress import ProgressLog
from videomac.pretrain.schedule import build_optimizer, ema_momentum, learning_rate
from videomac.pretrain.visualize import save_reconstruction_figure

__all__ = ["pretrain", "TrainingError", "NonFiniteLossError", "DataLoadingError"]


class TrainingError(RuntimeError):
    """A run that failed while training (the command exits 1; the last good checkpoint is intact)."""

    exit_code = 1


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The loss became NaN or infinite; the weights were not updated with it."""


class DataLoadingError(TrainingError):
    """Loading a batch failed: a DataLoader worker died (out of memory, killed) or raised, inputs vanished."""


class _Window:
    """What one logging interval accumulates: summed losses (on the device), micro-batches, pairs, wait."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.micro, self.pairs, self.waited, self.t0 = 0, 0, 0.0, time.perf_counter()


class _Dist:
    """torch.distributed from torchrun's environment (gloo on CPU, nccl on CUDA), or a single process."""

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

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _SeededItems(torch.utils.data.Dataset):
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


def _uses_units(dataset) -> bool:
    units = dataset.unit_ranges() if hasattr(dataset, "unit_ranges") else None
    return units is not None and any(hi - lo > 1 for lo, hi in units)


def _epoch_plan(
    dataset, seed: int, world: int, rank: int, batch_size: int, workers: int, usable: int
) -> Callable[[int], List[int]]:
    """This rank's full batches of each epoch, with the epoch order dealt to ``workers`` (the resumed run's).
    A closure without a reference to the trainer: the loader holds it through its sampler, and a cycle back
    to the loader would keep its workers alive after the run."""

    def plan(epoch: int) -> List[int]:
        # video files / frame folders: units decoded forward once per worker (videomac.pretrain.loader)
        return epoch_indices(dataset, epoch, seed, world, rank, batch_size, workers)[: usable * batch_size]

    return plan


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM sent to the whole process group: the main process
    stops the run (with a checkpoint) and shuts them down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    close_inherited_locks()  # the run folder's lock is the main process's: it must end with it


def _make_loader(dataset, sampler: EpochSampler, batch_size: int, num_workers: Optional[int], seed: int, device=None):
    # workers (None: from the CPU count), persistent + prefetching, pinned memory on CUDA, uint8 batches;
    # its own generator: creating an iterator must not draw from the global RNG, or a resumed epoch
    # (new iterator mid-epoch) would diverge from an uninterrupted one.
    return make_loader(
        dataset, sampler, batch_size, num_workers, seed, device=device, worker_init_fn=_ignore_stop_signals
    )


def _rng_state() -> Dict:
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


def _set_rng_state(state: Dict) -> None:
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


def _fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Cheap weight fingerprint used to prove all ranks ended with the same online weights."""
    vals = [p.detach().double().flatten() for p in model.parameters()]
    flat = torch.cat(vals)
    idx = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * torch.sin(idx)).sum(), flat.abs().max()])


def pretrain(cfg: PretrainConfig, trust_pickle: bool = False) -> Dict:
    """Run (or resume) pretraining; returns a summary dict. Only rank 0 writes files.

    A run stopped early (``stop_after``, SIGINT, SIGTERM) returns ``stopped=True`` (and ``signal``, the
    signal's name) after writing its checkpoint; resuming a run that had already finished changes nothing
    and returns ``nothing_to_do=True``. ``trust_pickle``: resume from a checkpoint that a
    weights-only load refuses (one written by an earlier videomac; only for files you trust).
    """
    check_config(cfg)
    check_model_name(cfg.model)
    main = int(os.environ.get("RANK", "0")) == 0
    # rank 0 owns the folder for the whole run, before anything is built (a second run is refused at once)
    with run_lock(cfg.output_dir) if main else contextlib.nullcontext(), _deterministic(cfg.deterministic):
        earlier = earlier_run(cfg.output_dir) if main and not cfg.resume else []
        if earlier:  # a fresh run must not mix its checkpoints and metrics with another run's
            raise ValueError(
                f"{cfg.output_dir} holds an earlier run ({', '.join(os.path.basename(p) for p in earlier)}); "
                f"continue it with --resume {cfg.output_dir}, or start this run in another --output-dir"
            )
        env = _Dist(cfg.device)
        try:
            return _Trainer(cfg, env, trust_pickle).run()
        finally:
            env.close()


@contextlib.contextmanager
def _deterministic(on: bool):
    """Deterministic kernels for the run (cuBLAS needs its workspace setting before its first use in the
    process, so set ``CUBLAS_WORKSPACE_CONFIG`` yourself if this process used CUDA before); the previous
    settings are restored after the run."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


class _Trainer:
    def __init__(self, cfg: PretrainConfig, env: _Dist, trust_pickle: bool = False):
        self.cfg, self.env, self.trust_pickle = cfg, env, trust_pickle
        if cfg.mask_ratio == 0:
            warnings.warn(
                "mask_ratio=0 masks nothing: VideoMAC's losses are computed on masked patches only, so the loss "
                "is 0 and the encoder learns nothing (use the paper's 0.75)",
                stacklevel=3,
            )
        if cfg.amp == "fp16" and env.device.type != "cuda":
            raise ValueError("fp16 AMP needs CUDA; use --amp bf16 on CPU")
        torch.manual_seed(cfg.seed + env.rank)
        np.random.seed(cfg.seed + env.rank)
        random.seed(cfg.seed + env.rank)

        self.dataset = FramePairDataset(
            cfg.data,
            input_size=cfg.input_size,
            gap=cfg.gap,
            pairs_per_video=cfg.pairs_per_video,
            synthetic_videos=cfg.synthetic_videos,
            synthetic_frames=cfg.synthetic_frames,
            video_short_side=cfg.video_short_side,
            seed=cfg.seed,
            gpu_decode=cfg.gpu_decode and env.device.type == "cuda",
            frame_units=cfg.frame_units,
        )
        if cfg.total_batch:
            cfg.accum_iter = max(1, cfg.total_batch // (cfg.batch_size * env.world))
        self.eff_batch = cfg.batch_size * cfg.accum_iter * env.world
        per_rank = math.ceil(len(self.dataset) / env.world)
        self.micro_per_epoch = per_rank // cfg.batch_size
        if self.micro_per_epoch < cfg.accum_iter:
            raise ValueError(
                f"dataset of {len(self.dataset)} pairs is too small for batch {cfg.batch_size} x accum "
                f"{cfg.accum_iter} x {env.world} process(es): no full step per epoch; lower --batch-size "
                "add videos, or leave --pairs-per-video unset (every pair)"
            )
        self.steps_per_epoch = self.micro_per_epoch // cfg.accum_iter
        self.total_steps = cfg.max_steps if cfg.max_steps else cfg.epochs * self.steps_per_epoch
        self.warmup_steps = (
            cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * self.steps_per_epoch)
        )
        self.warmup_steps = min(self.warmup_steps, self.total_steps // 2)
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.blr * self.eff_batch / 256
        if cfg.min_lr > self.base_lr:
            raise ValueError(
                f"--min-lr {cfg.min_lr} is above the lr {self.base_lr:g} (--blr {cfg.blr} x "
                f"effective batch {self.eff_batch} / 256): the schedule decays from the lr to the min-lr"
            )
        half = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        self._autocast = dict(device_type=env.device.type, dtype=half, enabled=cfg.amp != "none")

        self.model = build_model(cfg).to(env.device)
        # no visible patch: the encoder would see nothing and get no gradient
        check_visible(
            grid_size((cfg.input_size, cfg.input_size), self.model.patch_size), cfg.mask_ratio, self.model.patch_size
        )
        self.optimizer = build_optimizer(self.model, self.base_lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.ddp = self.model
        if env.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        # compiled once; the backward graph follows from the forward's
        self.forward = torch.compile(self.ddp, mode=cfg.compile_mode) if cfg.compile else self.ddp
        self.stop_requested = False
        self.stop_signal: Optional[int] = None
        self.out = cfg.output_dir
        self.ckpt_path = os.path.join(self.out, CHECKPOINT)
        self.skipped_log = os.path.join(self.out, SKIPPED)
        self.sampler = EpochSampler(seed=cfg.seed, rank=env.rank, seeded=True)
        items = _SeededItems(self.dataset, self.skipped_log)
        self.loader = _make_loader(items, self.sampler, cfg.batch_size, cfg.num_workers, cfg.seed, env.device)
        self.step = 0
        self._last_loss: Optional[float] = None  # the last logged mean loss (summary.json)
        self.epoch = 0
        self.micro_done = 0  # micro-batches done in the current epoch
        self.saved_step: Optional[int] = None  # step of the checkpoint.pt this run wrote or resumed from
        # Units (video files, --frame-units) are dealt to the DataLoader workers in the epoch order; a resumed
        # run keeps the first run's count, so its order, hence its weights, do not depend on --num-workers.
        self.order_workers = max(1, self.loader.num_workers)

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> Dict:
        """The checkpoint: tensors and plain values only (loadable with ``weights_only=True``)."""
        rng = [_rng_state()]
        if self.env.world > 1:  # every rank's own RNG (masks, drop path), so each resumes its stream
            rng = [None] * self.env.world
            dist.all_gather_object(rng, _rng_state())
        return dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.step,
            epoch=self.epoch,
            micro_done=self.micro_done,
            epoch_micro_batches=self.steps_per_epoch * self.cfg.accum_iter,
            order_workers=self.order_workers,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,  # for the epochs done an export's model card reports
            warmup_steps=self.warmup_steps,
            base_lr=self.base_lr,
            rng=rng,
            data_rng="per-item seed (seed, epoch, rank, position)",
            config=self.cfg.to_dict(),
            world_size=self.env.world,
            version=FORMAT_VERSION,
        )

    def save(self) -> None:
        state = self.state()
        if self.env.main:
            previous = self.saved_step if self.saved_step != self.step else None
            write_checkpoint(state, self.out, self.cfg.keep_checkpoints, previous_step=previous)
        self.saved_step = self.step
        self.env.barrier()

    def resume(self, path: str) -> None:
        """Load the newest intact checkpoint of ``path`` (a file or a run folder) and check that it fits
        this run's model; nothing is written before this succeeds."""
        ck, used, problems = load_latest(path, map_location=self.env.device, trust_pickle=self.trust_pickle)
        if problems and self.env.main:
            print(f"warning: {'; '.join(problems)}", file=sys.stderr)
            print(f"resuming from {used} (step {ck.get('step')}), the newest intact checkpoint", file=sys.stderr)
        saved = ck.get("config", {})
        check_progress(ck, used, self.total_steps, self._length_setting(saved))
        if saved.get("model") != self.cfg.model:
            raise ValueError(f"checkpoint {used} is for {saved.get('model')}, not --model {self.cfg.model}")
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            keys = ("decoder_dim", "decoder_depth", "motion_weight", "backend")
            diff = [
                f"{k}: {saved.get(k)!r} there, {getattr(self.cfg, k)!r} here"
                for k in keys
                if k in saved and saved.get(k) != getattr(self.cfg, k)
            ]
            why = "; ".join(diff) if diff else " ".join(str(e).split())[:400]  # torch names the key on line 2
            raise ValueError(f"checkpoint {used} does not fit this run's model ({why})") from None
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.micro_done = ck["step"], ck["epoch"], ck["micro_done"]
        saved_workers = int(ck.get("order_workers", self.order_workers))
        if saved_workers != self.order_workers and self.env.main and _uses_units(self.dataset):
            print(
                f"note: keeping the epoch order of the saved run, dealt to {saved_workers} DataLoader worker(s); "
                f"with {self.order_workers} here some units are decoded by two workers (slower, same samples)",
                file=sys.stderr,
            )
        self.order_workers = saved_workers
        self.saved_step = ck["step"] if os.path.basename(used) == CHECKPOINT else None
        rng = ck.get("rng")
        if isinstance(rng, dict) and ck.get("world_size", 1) == self.env.world == 1:  # format 1: rank 0 only
            _set_rng_state(rng)
        elif isinstance(rng, list) and len(rng) == self.env.world:
            _set_rng_state(rng[self.env.rank])
        elif self.env.main:
            print(
                f"note: {used} was written by {ck.get('world_size', 1)} process(es), this run has "
                f"{self.env.world}: the RNG streams restart (the run is not bit-exact)",
                file=sys.stderr,
            )

    def _length_setting(self, saved: Dict) -> Optional[str]:
        """The flag of this resume that set the run's length, when it differs from the checkpoint's."""
        cfg = self.cfg
        if cfg.max_steps is not None and cfg.max_steps != saved.get("max_steps"):
            return f"--max-steps {cfg.max_steps}"
        if cfg.max_steps is None and cfg.epochs != saved.get("epochs"):
            return f"--epochs {cfg.epochs} ({self.steps_per_epoch} steps each)"
        return None

    def _finished_before(self) -> bool:
        """Whether the resumed run had already ended: at its last step, with its summary written (a run
        that failed while writing its outputs is finished again instead). Every rank agrees with rank 0."""
        done = self.step >= self.total_steps and (not self.env.main or os.path.isfile(os.path.join(self.out, SUMMARY)))
        flag = torch.tensor([float(done)], device=self.env.device)
        if self.env.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # -- the loop: named steps -----------------------------------------------------------------------
    def run(self) -> Dict:
        """Open the run folder, train until the last step or a stop, save, and summarise. Whatever ends the
        loop (an error, a signal, a dead worker), the DataLoader's workers are shut down first, so the
        process can always exit. A resumed run that had already finished changes nothing."""
        if self.cfg.resume:
            self.resume(self.cfg.resume)  # checked before anything in the folder changes
            if self._finished_before():
                if self.env.main:
                    print(f"{self.out} already finished at step {self.step}; nothing to do", file=sys.stderr)
                return dict(step=self.step, finished=True, nothing_to_do=True, checkpoint=self.ckpt_path)
        self._open_folder()
        handlers = _catch(self._on_signal)
        try:
            try:
                self._train()
            except RuntimeError as e:
                # torch reports a dead worker from its SIGCHLD handler, wherever the main process then is
                if "DataLoader worker" in str(e) and not isinstance(e, TrainingError):
                    raise DataLoadingError(self._load_failure(e)) from e
                raise
            finally:
                shutdown_workers(self.loader)
                self._close_outputs()
        except BaseException:
            _restore_handlers(handlers)  # failing: give the caller its handlers back now
            raise
        try:
            if self.step != self.saved_step:  # a resume that trained no step has its checkpoint already
                self.save()  # a signal during this save is noted, not fatal: the handlers stay until it is done
        finally:
            _restore_handlers(handlers)
        if self.step < self.total_steps:
            return self._stopped()
        return self._finish(self._last_batch)

    def _open_folder(self) -> None:
        """Ready the run folder (rank 0), once a resume's checkpoint was loaded and checked."""
        cfg, env = self.cfg, self.env
        if env.main:
            os.makedirs(self.out, exist_ok=True)
            for p in stale_temporaries(self.out):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
                    print(f"removed {p}, left by a process killed while writing", file=sys.stderr)
            if not cfg.resume and os.path.exists(self.skipped_log):
                os.remove(self.skipped_log)  # a fresh run: skips are counted anew
            with atomic_file(os.path.join(self.out, CONFIG)) as tmp, open(tmp, "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        env.barrier()
        self._metrics = open(os.path.join(self.out, METRICS), "a") if env.main else None
        self.tb = _tensorboard(self.out) if env.main else None
        # a bar on a terminal; one plain line per logging interval in batch jobs (stderr a file or pipe)
        self._bar = ProgressLog(
            self.total_steps, self.step, f"pretrain {cfg.model}", mode="auto" if (env.main and cfg.progress) else "off"
        )

    def _close_outputs(self) -> None:
        self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self.tb is not None:
            self.tb.close()

    def _train(self) -> None:
        """Steps until the last one or a stop: one loader iterator spans every epoch left."""
        cfg, env = self.cfg, self.env
        self.model.train()
        self._start_step = self.step
        self._window = _Window()
        self._last_batch = None
        self._run_t0, self._run_pairs = time.perf_counter(), 0
        usable = self.steps_per_epoch * cfg.accum_iter  # micro-batches of an epoch (its full batches)
        last_epoch = math.ceil(self.total_steps * cfg.accum_iter / usable)
        if self.micro_done >= usable:  # a checkpoint written at the end of an epoch by an earlier version
            self.epoch, self.micro_done = self.epoch + 1, 0
        plan = _epoch_plan(self.dataset, cfg.seed, env.world, env.rank, cfg.batch_size, self.order_workers, usable)
        while self.step < self.total_steps:
            # the workers load the next epoch's first batches while this one ends, so no epoch starts empty
            self.sampler.set_span(plan, self.epoch, self.micro_done * cfg.batch_size, max(last_epoch, self.epoch + 1))
            for frame1, frame2 in self._batches():
                if not self._micro_step(frame1, frame2):
                    continue  # gradients accumulate until the micro-batch that ends the step
                momentum = self._optimizer_step()
                self._epoch_rollover(usable)
                self._log_interval(momentum)
                if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save()
                if self._done():
                    return
            if self._done():
                return

    def _batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches on the device, timing the wait for each; a failure to load (a worker that
        died or raised, inputs that vanished) becomes a one-line :class:`DataLoadingError`."""
        batches, t_wait = iter(self.loader), time.perf_counter()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (RuntimeError, OSError) as e:
                raise DataLoadingError(self._load_failure(e)) from e
            # uint8 to the device, normalised there (JPEGs decoded there with gpu_decode)
            frames = batch_to_device(batch, self.env.device)
            self._window.waited += time.perf_counter() - t_wait
            yield frames
            t_wait = time.perf_counter()

    def _micro_step(self, frame1: torch.Tensor, frame2: torch.Tensor) -> bool:
        """Forward and backward of one micro-batch, its losses summed for the log; a non-finite loss raises
        before any weight changes. Returns whether this micro-batch ends an optimizer step."""
        cfg, env = self.cfg, self.env
        self._lr = learning_rate(self.step, self.total_steps, self.warmup_steps, self.base_lr, cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr
        boundary = (self.micro_done + 1) % cfg.accum_iter == 0
        # DDP all-reduces gradients only on the micro-batch that ends an accumulation
        no_sync = self.ddp.no_sync() if (env.world > 1 and not boundary) else contextlib.nullcontext()
        with no_sync:
            if cfg.compile and cfg.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step begins
            with torch.autocast(**self._autocast):
                out = self.forward(frame1, frame2)
            loss = out["loss"]
            finite = torch.isfinite(loss.detach())
            self.scaler.scale(loss / cfg.accum_iter).backward()
        # checked once the backward is queued, so the device is not left idle while we wait;
        # still before the optimizer step: a non-finite loss never reaches the weights
        if not self._all_finite(finite):
            raise NonFiniteLossError(self._nan_message(loss))
        w = self._window
        for k, v in out.items():
            if k.startswith("loss"):  # summed on the device: read once per log interval
                w.sums[k] = w.sums.get(k, 0.0) + v.detach().double()
        w.micro += 1
        self.micro_done += 1
        w.pairs += frame1.shape[0] * env.world
        self._run_pairs += frame1.shape[0] * env.world
        self._last_batch = (frame1, frame2, out)
        return boundary

    def _optimizer_step(self) -> float:
        """Clip, step the optimizer (through the AMP scaler), then move the target by EMA; returns the momentum."""
        cfg = self.cfg
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.online.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = ema_momentum(
            self.step, self.total_steps, cfg.ema_base, cfg.ema_final, cfg.ema_schedule, self.steps_per_epoch
        )
        self.model.update_target(momentum)
        self.step += 1
        self._bar.update(1)
        return momentum

    def _epoch_rollover(self, usable: int) -> None:
        if self.micro_done >= usable:  # the epoch is complete (usable is a multiple of accum_iter)
            self.epoch, self.micro_done = self.epoch + 1, 0
            if self.env.main and self.cfg.vis_every and self.epoch % self.cfg.vis_every == 0:
                self._figure(self._last_batch, f"recon_epoch{self.epoch:04d}.png")

    def _log_interval(self, momentum: float) -> None:
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
            w = self._window
            elapsed = max(time.perf_counter() - w.t0, 1e-9)
            self._log(
                self._metrics,
                self._bar,
                dict(w.sums, n=w.micro),
                self._lr,
                momentum,
                w.pairs / elapsed,
                min(1.0, w.waited / elapsed),
            )
            self._window = _Window()

    def _done(self) -> bool:
        return self.step >= self.total_steps or self._should_stop(self._start_step)

    def _stopped(self) -> Dict:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else None
        msg = f"{name} received" if name else f"--stop-after {self.cfg.stop_after} reached"
        if self.stop_requested and not name:
            msg = "stop requested by another process"
        if self.env.main:
            print(
                f"{msg}: stopped at step {self.step}/{self.total_steps} with a checkpoint; "
                f"resume with --resume {self.out}",
                file=sys.stderr,
            )
        out = dict(step=self.step, stopped=True, checkpoint=self.ckpt_path, signal=name)
        out.update(self._skipped_summary())
        return out

    def _where(self) -> str:
        if os.path.exists(self.ckpt_path):
            return f"The last good checkpoint is {self.ckpt_path}; resume with --resume {self.out}."
        return "No checkpoint was written yet."

    def _load_failure(self, e: BaseException) -> str:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        what = lines[-1][:300] if lines else type(e).__name__  # a worker's error: its last line is the cause
        return f"loading training data failed at step {self.step} (epoch {self.epoch}): {what}. {self._where()}"

    def _skipped(self) -> Dict[str, str]:
        """Inputs skipped so far: at dataset construction, and while loading (any process's log)."""
        out = dict(getattr(self.dataset, "skipped", {}))
        try:
            with open(self.skipped_log) as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        rec = json.loads(line)
                        out.setdefault(rec["path"], rec["reason"])
        except OSError:
            pass
        return out

    def _skipped_summary(self) -> Dict:
        skipped = self._skipped() if self.env.main else {}
        return dict(skipped_count=len(skipped), skipped=skipped)

    def _all_finite(self, finite: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (so all ranks stop together, none hangs)."""
        ok = finite.float().reshape(1)
        if self.env.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _nan_message(self, loss: torch.Tensor) -> str:
        return (
            f"loss is {loss.item()} at step {self.step} (epoch {self.epoch}); stopping. {self._where()} "
            "Try a lower --blr, --clip-grad 1.0, or --amp none."
        )

    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.stop_requested, self.stop_signal = True, signum
        if self.env.main:
            again = " (Ctrl-C again to abort without one)" if signum == signal.SIGINT else ""
            print(
                f"\n{signal.Signals(signum).name}: stopping after step {self.step + 1} with a checkpoint{again}",
                file=sys.stderr,
                flush=True,
            )

    def _should_stop(self, start_step: int) -> bool:
        stop = self.stop_requested or (
            self.cfg.stop_after is not None and self.step - start_step >= self.cfg.stop_after
        )
        if self.env.world > 1:  # every rank must stop at the same step
            flag = torch.tensor([float(stop)], device=self.env.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _log(self, log, bar, sums: Dict, lr: float, momentum: float, rate: float, data_wait: float) -> None:
        n = max(1, sums.pop("n", 1))
        means = torch.stack(
            [torch.as_tensor(sums[k], dtype=torch.float64, device=self.env.device) / n for k in sorted(sums)]
        )
        means = self.env.mean(means).cpu()
        rec = dict(step=self.step, epoch=self.epoch)
        rec.update({k: float(v) for k, v in zip(sorted(sums), means)})
        self._last_loss = rec.get("loss")
        rec.update(lr=lr, momentum=momentum, pairs_per_sec=rate, data_wait=data_wait)
        if log is not None:
            rec["skipped"] = len(self._skipped())  # inputs skipped so far (their list: summary.json)
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if self.tb is not None:
                for k, v in rec.items():
                    if k not in ("step", "epoch"):
                        self.tb.add_scalar(f"pretrain/{k}", v, self.step)
            bar.log(rec)

    def _figure(self, batch: Tuple, name: str) -> Optional[str]:
        frame1, frame2, out = batch
        path = os.path.join(self.out, name)
        save_reconstruction_figure(
            path,
            frame1.float().cpu(),
            frame2.float().cpu(),
            out["mask"].cpu(),
            out["pred_online"].detach().float().cpu(),
            out["pred_target"].detach().float().cpu(),
            patch_size=self.model.patch_size,
            norm_pix_loss=self.cfg.norm_pix_loss,
        )
        return path

    def _finish(self, last_batch) -> Dict:
        env = self.env
        fp = _fingerprint(self.model.online).to(env.device)
        in_sync = True
        if env.world > 1:
            gathered = [torch.zeros_like(fp) for _ in range(env.world)]
            dist.all_gather(gathered, fp)
            in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
        wall = time.perf_counter() - self._run_t0
        summary = dict(
            step=self.step,
            epoch=self.epoch,
            world_size=env.world,
            effective_batch=self.eff_batch,
            ranks_in_sync=in_sync,
            checkpoint=self.ckpt_path,
            final_loss=self._last_loss,
            wall_time_s=round(wall, 3),
            pairs_per_s=round(self._run_pairs / max(wall, 1e-9), 3),
            **self._skipped_summary(),
        )
        if env.main:
            if last_batch is not None:
                summary["figure"] = self._figure(last_batch, "reconstruction.png")
            metrics = os.path.join(self.out, METRICS)
            if os.path.exists(metrics) and os.path.getsize(metrics):
                summary["loss_curve"] = save_loss_curve(
                    metrics, os.path.join(self.out, "loss.png"), self.cfg.norm_pix_loss
                )
            if self.cfg.export:
                summary["encoder"] = os.path.join(self.out, ENCODER)
                save_encoder(self.model, summary["encoder"])
            with open(os.path.join(self.out, SUMMARY), "w") as f:
                json.dump(summary, f, indent=2)
            if summary["skipped_count"]:
                print(
                    f"skipped {summary['skipped_count']} unusable input(s); see {os.path.join(self.out, SUMMARY)}",
                    file=sys.stderr,
                )
        if not in_sync:
            raise RuntimeError("online weights differ across ranks at the end of training")
        env.barrier()
        return summary


def _tensorboard(out_dir: str):
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(out_dir, "tb"))


def _catch(handler) -> Dict:
    """SIGINT and SIGTERM to ``handler`` (main thread only); returns the handlers they had."""
    if not _main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: Dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
