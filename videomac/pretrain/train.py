"""The VideoMAC pretraining run, split as MAE splits it: :func:`pretrain` reads top to bottom (settings,
seeds, data, plan, model and optimizer, resume, loop, summary); the loop calls the one
:func:`~videomac.pretrain.step.train_step`. Its parts: :mod:`~videomac.pretrain.distributed` (torchrun),
:mod:`~videomac.pretrain.feed` (batches), :mod:`~videomac.pretrain.state` (step, position, RNG: exact
resume), :mod:`~videomac.pretrain.stop` (signals), :mod:`~videomac.pretrain.metrics` (what a run writes),
:mod:`~videomac.pretrain.checkpoint` (atomic checkpoints, the run folder's lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from typing import Dict, Optional

import torch

from videomac.files import atomic_file, stale_temporaries
from videomac.masking import check_visible, grid_size
from videomac.models.names import check_model_name
from videomac.pretrain.checkpoint import (
    FORMAT_VERSION,
    build_model,
    check_progress,
    earlier_run,
    load_latest,
    run_lock,
    write_checkpoint,
)
from videomac.pretrain.config import CHECKPOINT, CONFIG, SKIPPED, SUMMARY, PretrainConfig, check_config
from videomac.pretrain.distributed import Dist, is_main_process
from videomac.pretrain.feed import Feed, build_dataset, uses_units
from videomac.pretrain.metrics import MetricsLog, SkipLog, write_summary
from videomac.pretrain.schedule import RunPlan, build_optimizer, ema_momentum, learning_rate
from videomac.pretrain.state import RunState, seed_everything
from videomac.pretrain.step import DataLoadingError, NonFiniteLossError, Trainable, TrainingError, train_step
from videomac.pretrain.stop import StopRequest

__all__ = ["pretrain", "TrainingError", "NonFiniteLossError", "DataLoadingError"]


def pretrain(cfg: PretrainConfig, trust_pickle: bool = False) -> Dict:
    """Run (or resume) pretraining; returns a summary dict. Only rank 0 writes files.

    A run stopped early (``stop_after``, SIGINT, SIGTERM) returns ``stopped=True`` (and ``signal``, the
    signal's name) after writing its checkpoint; resuming a run that had already finished changes nothing
    and returns ``nothing_to_do=True``. ``trust_pickle``: resume from a checkpoint that a
    weights-only load refuses (one written by an earlier videomac; only for files you trust).
    """
    check_config(cfg)
    check_model_name(cfg.model)
    main = is_main_process()
    # rank 0 owns the folder for the whole run, before anything is built (a second run is refused at once)
    with run_lock(cfg.output_dir) if main else contextlib.nullcontext(), _deterministic(cfg.deterministic):
        if main and not cfg.resume:
            _refuse_earlier_run(cfg.output_dir)
        env = Dist(cfg.device)
        try:
            return _run(cfg, env, trust_pickle)
        finally:
            env.close()


def _run(cfg: PretrainConfig, env: Dist, trust_pickle: bool) -> Dict:
    """MAE's ``main``: build everything, resume, train, save, summarise."""
    _check_run(cfg, env)
    seed_everything(cfg.seed + env.rank)
    dataset = build_dataset(cfg, env.device)
    if cfg.total_batch:  # the accumulation that reaches the total batch (saved with the settings)
        cfg.accum_iter = max(1, cfg.total_batch // (cfg.batch_size * env.world))
    plan = RunPlan.of(cfg, len(dataset), env.world)
    model = build_model(cfg).to(env.device)
    # no visible patch: the encoder would see nothing and get no gradient
    check_visible(grid_size((cfg.input_size, cfg.input_size), model.patch_size), cfg.mask_ratio, model.patch_size)
    trainable = _trainable(cfg, env, model, plan.base_lr)
    out = cfg.output_dir
    skips = SkipLog(os.path.join(out, SKIPPED), dataset)
    feed = Feed(dataset, cfg, env, skips.path)
    # Units (video files, --frame-units) are dealt to the DataLoader workers in the epoch order; a resumed
    # run keeps the first run's count, so its order, hence its weights, do not depend on --num-workers.
    run = RunState(order_workers=max(1, feed.num_workers), world=env.world, rank=env.rank)
    ckpt = _Checkpoints(cfg, env, trainable, run, plan)
    if cfg.resume:
        ckpt.resume(trust_pickle, uses_units(dataset))  # before anything in the folder changes
        if _finished_before(run, plan, env, out):
            if env.main:
                print(f"{out} already finished at step {run.step}; nothing to do", file=sys.stderr)
            return dict(step=run.step, finished=True, nothing_to_do=True, checkpoint=ckpt.path)
    _open_folder(cfg, env, skips.path)
    log = MetricsLog(out, env, skips, plan.total_steps, run.step, f"pretrain {cfg.model}", cfg.progress)
    stop = StopRequest(run, cfg.stop_after, env.main)
    with stop.catching():  # a signal during the last save is noted, not fatal: the handlers stay until it is done
        try:
            _train(cfg, env, plan, trainable, run, feed, log, stop, ckpt)
        except RuntimeError as e:
            # torch reports a dead worker from its SIGCHLD handler, wherever the main process then is
            if "DataLoader worker" in str(e) and not isinstance(e, TrainingError):
                raise DataLoadingError(_load_failure(e, run, ckpt)) from e
            raise
        finally:  # whatever ends the loop, the workers are shut down, so the process can always exit
            feed.close()
            log.close()
        if run.step != run.saved_step:  # a resume that trained no step has its checkpoint already
            ckpt.save()
    if run.step < plan.total_steps:
        return _stopped(run, plan, env, stop, ckpt, skips)
    return _finish(cfg, env, plan, model, run, log, ckpt, skips)


def _train(cfg, env, plan: RunPlan, t: Trainable, run: RunState, feed: Feed, log: MetricsLog, stop, ckpt) -> None:
    """MAE's ``train_one_epoch`` over every epoch left: steps until the last one or a stop."""
    t.model.train()
    start = run.step
    run.end_epoch_if_complete(plan.epoch_micro_batches)  # a checkpoint written at an epoch's end by an earlier version

    def failure(e: BaseException) -> str:
        return _load_failure(e, run, ckpt)

    while run.step < plan.total_steps:
        for frames, waited in feed.batches(run, plan, failure):
            lr = learning_rate(run.step, plan.total_steps, plan.warmup_steps, plan.base_lr, cfg.min_lr)
            momentum = ema_momentum(
                run.step, plan.total_steps, cfg.ema_base, cfg.ema_final, cfg.ema_schedule, plan.steps_per_epoch
            )
            update = (run.micro_done + 1) % plan.accum_iter == 0
            try:
                out = train_step(t, frames, lr, momentum, update)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e} at step {run.step} (epoch {run.epoch}); stopping. {ckpt.where()} "
                    "Try a lower --blr, --clip-grad 1.0, or --amp none."
                ) from None
            log.micro_batch(frames, out, waited)
            run.micro_done += 1
            if not update:
                continue  # gradients accumulate until the micro-batch that ends the step
            run.step += 1
            log.bar.update(1)
            new_epoch = run.end_epoch_if_complete(plan.epoch_micro_batches)
            if new_epoch and env.main and cfg.vis_every and run.epoch % cfg.vis_every == 0:
                log.figure(f"recon_epoch{run.epoch:04d}.png", t.model.patch_size, cfg.norm_pix_loss)
            if run.step % cfg.log_every == 0 or run.step == plan.total_steps:
                log.interval(run.step, run.epoch, lr, momentum)
            if run.step % cfg.save_every == 0 and run.step < plan.total_steps:
                ckpt.save()
            if run.step >= plan.total_steps or stop.due(run.step - start, env):
                return
        if run.step >= plan.total_steps or stop.due(run.step - start, env):
            return


class _Checkpoints:
    """The run's ``checkpoint.pt``: the weights, optimizer, scaler, :class:`RunState` and plan, written
    atomically by rank 0 (the RNG of every rank in it), and the resume from it."""

    def __init__(self, cfg: PretrainConfig, env: Dist, t: Trainable, run: RunState, plan: RunPlan) -> None:
        self.cfg, self.env, self.t, self.run, self.plan = cfg, env, t, run, plan
        self.path = os.path.join(cfg.output_dir, CHECKPOINT)

    def state(self) -> Dict:
        """The checkpoint: tensors and plain values only (loadable with ``weights_only=True``)."""
        plan = self.plan
        return dict(
            model=self.t.model.state_dict(),
            optimizer=self.t.optimizer.state_dict(),
            scaler=self.t.scaler.state_dict(),
            **self.run.state_dict(),
            epoch_micro_batches=plan.epoch_micro_batches,
            total_steps=plan.total_steps,
            steps_per_epoch=plan.steps_per_epoch,  # for the epochs done an export's model card reports
            warmup_steps=plan.warmup_steps,
            base_lr=plan.base_lr,
            config=self.cfg.to_dict(),
            version=FORMAT_VERSION,
        )

    def save(self) -> None:
        state, run = self.state(), self.run
        if self.env.main:
            previous = run.saved_step if run.saved_step != run.step else None
            write_checkpoint(state, self.cfg.output_dir, self.cfg.keep_checkpoints, previous_step=previous)
        run.saved_step = run.step
        self.env.barrier()

    def where(self) -> str:
        if os.path.exists(self.path):
            return f"The last good checkpoint is {self.path}; resume with --resume {self.cfg.output_dir}."
        return "No checkpoint was written yet."

    def resume(self, trust_pickle: bool, units: bool) -> None:
        """Load the newest intact checkpoint of ``cfg.resume`` (a file or a run folder) and check that it fits
        this run's model; nothing is written before this succeeds."""
        cfg, env, t = self.cfg, self.env, self.t
        ck, used, problems = load_latest(cfg.resume, map_location=env.device, trust_pickle=trust_pickle)
        if problems and env.main:
            print(f"warning: {'; '.join(problems)}", file=sys.stderr)
            print(f"resuming from {used} (step {ck.get('step')}), the newest intact checkpoint", file=sys.stderr)
        saved = ck.get("config", {})
        check_progress(ck, used, self.plan.total_steps, self._length_setting(saved))
        if saved.get("model") != cfg.model:
            raise ValueError(f"checkpoint {used} is for {saved.get('model')}, not --model {cfg.model}")
        try:
            t.model.load_state_dict(ck["model"])
            t.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            keys = ("decoder_dim", "decoder_depth", "motion_weight", "backend")
            diff = [
                f"{k}: {saved.get(k)!r} there, {getattr(cfg, k)!r} here"
                for k in keys
                if k in saved and saved.get(k) != getattr(cfg, k)
            ]
            why = "; ".join(diff) if diff else " ".join(str(e).split())[:400]  # torch names the key on line 2
            raise ValueError(f"checkpoint {used} does not fit this run's model ({why})") from None
        t.scaler.load_state_dict(ck["scaler"])
        workers = self.run.order_workers  # this run's
        note = self.run.load_state_dict(ck, used)
        if self.run.order_workers != workers and env.main and units:
            print(
                f"note: keeping the epoch order of the saved run, dealt to {self.run.order_workers} DataLoader "
                f"worker(s); with {workers} here some units are decoded by two workers (slower, same samples)",
                file=sys.stderr,
            )
        self.run.saved_step = ck["step"] if os.path.basename(used) == CHECKPOINT else None
        if note and env.main:
            print(note, file=sys.stderr)

    def _length_setting(self, saved: Dict) -> Optional[str]:
        """The flag of this resume that set the run's length, when it differs from the checkpoint's."""
        cfg = self.cfg
        if cfg.max_steps is not None and cfg.max_steps != saved.get("max_steps"):
            return f"--max-steps {cfg.max_steps}"
        if cfg.max_steps is None and cfg.epochs != saved.get("epochs"):
            return f"--epochs {cfg.epochs} ({self.plan.steps_per_epoch} steps each)"
        return None


def _trainable(cfg: PretrainConfig, env: Dist, model: torch.nn.Module, lr: float) -> Trainable:
    """The model with its optimizer, AMP scaler, DDP wrapper (several processes) and compiled forward."""
    ddp = None
    if env.world > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    wrapped = ddp or model
    half = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return Trainable(
        model=model,
        optimizer=build_optimizer(model, lr, cfg.weight_decay),
        scaler=torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16"),
        # compiled once; the backward graph follows from the forward's
        forward=torch.compile(wrapped, mode=cfg.compile_mode) if cfg.compile else wrapped,
        autocast=dict(device_type=env.device.type, dtype=half, enabled=cfg.amp != "none"),
        accum_iter=cfg.accum_iter,
        clip_grad=cfg.clip_grad,
        cuda_graphs=cfg.compile and cfg.compile_mode == "reduce-overhead",
        ddp=ddp,
        all_finite=env.all,
    )


def _check_run(cfg: PretrainConfig, env: Dist) -> None:
    if cfg.mask_ratio == 0:
        warnings.warn(
            "mask_ratio=0 masks nothing: VideoMAC's losses are computed on masked patches only, so the loss "
            "is 0 and the encoder learns nothing (use the paper's 0.75)",
            stacklevel=4,
        )
    if cfg.amp == "fp16" and env.device.type != "cuda":
        raise ValueError("fp16 AMP needs CUDA; use --amp bf16 on CPU")


def _refuse_earlier_run(out: str) -> None:
    """A fresh run must not mix its checkpoints and metrics with another run's."""
    earlier = earlier_run(out)
    if earlier:
        raise ValueError(
            f"{out} holds an earlier run ({', '.join(os.path.basename(p) for p in earlier)}); "
            f"continue it with --resume {out}, or start this run in another --output-dir"
        )


def _finished_before(run: RunState, plan: RunPlan, env: Dist, out: str) -> bool:
    """Whether the resumed run had already ended: at its last step, with its summary written (a run
    that failed while writing its outputs is finished again instead). Every rank agrees with rank 0."""
    return env.all(
        torch.tensor(run.step >= plan.total_steps and (not env.main or os.path.isfile(os.path.join(out, SUMMARY))))
    )


def _open_folder(cfg: PretrainConfig, env: Dist, skipped_log: str) -> None:
    """Ready the run folder (rank 0), once a resume's checkpoint was loaded and checked."""
    if env.main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        for p in stale_temporaries(cfg.output_dir):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
                print(f"removed {p}, left by a process killed while writing", file=sys.stderr)
        if not cfg.resume and os.path.exists(skipped_log):
            os.remove(skipped_log)  # a fresh run: skips are counted anew
        with atomic_file(os.path.join(cfg.output_dir, CONFIG)) as tmp, open(tmp, "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
    env.barrier()


def _load_failure(e: BaseException, run: RunState, ckpt: _Checkpoints) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    what = lines[-1][:300] if lines else type(e).__name__  # a worker's error: its last line is the cause
    return f"loading training data failed at step {run.step} (epoch {run.epoch}): {what}. {ckpt.where()}"


def _stopped(run: RunState, plan: RunPlan, env: Dist, stop: StopRequest, ckpt: _Checkpoints, skips: SkipLog) -> Dict:
    if env.main:
        print(
            f"{stop.reason()}: stopped at step {run.step}/{plan.total_steps} with a checkpoint; "
            f"resume with --resume {ckpt.cfg.output_dir}",
            file=sys.stderr,
        )
    return dict(step=run.step, stopped=True, checkpoint=ckpt.path, signal=stop.signal_name, **skips.summary(env.main))


def _finish(cfg, env: Dist, plan: RunPlan, model, run: RunState, log: MetricsLog, ckpt, skips: SkipLog) -> Dict:
    """The summary of a finished run (``summary.json``, the figures, the encoder); the ranks must agree."""
    in_sync = env.in_sync(model.online)
    wall = log.wall_time()
    summary = dict(
        step=run.step,
        epoch=run.epoch,
        world_size=env.world,
        effective_batch=plan.effective_batch,
        ranks_in_sync=in_sync,
        checkpoint=ckpt.path,
        final_loss=log.last_loss,
        wall_time_s=round(wall, 3),
        pairs_per_s=round(log.run_pairs / max(wall, 1e-9), 3),
        **skips.summary(env.main),
    )
    if env.main:
        write_summary(summary, log, cfg, model)
    if not in_sync:
        raise RuntimeError("online weights differ across ranks at the end of training")
    env.barrier()
    return summary


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
