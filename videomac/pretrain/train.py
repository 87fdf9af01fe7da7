"""The VideoMAC pretraining loop: AMP, DDP through torchrun, gradient accumulation, atomic
checkpoints with exact resume, JSONL metrics, reconstruction figures, dense encoder export."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from videomac.models.names import check_model_name
from videomac.pretrain.checkpoint import atomic_save, build_model, load_checkpoint, save_encoder
from videomac.pretrain.config import CHECKPOINT, ENCODER, METRICS, PretrainConfig
from videomac.pretrain.data import FramePairDataset
from videomac.pretrain.schedule import EMA_SCHEDULES, build_optimizer, ema_momentum, learning_rate
from videomac.pretrain.visualize import save_reconstruction_figure

__all__ = ["pretrain"]


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


def _epoch_indices(n: int, epoch: int, seed: int, world: int, rank: int) -> List[int]:
    """This rank's share of a seeded permutation of the epoch (padded so all ranks match)."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    perm += perm[: per_rank * world - n]
    return perm[rank::world]


class _EpochSampler(torch.utils.data.Sampler):
    """Yields the indices set for the current epoch, so one DataLoader (and its persistent workers,
    with their decoded-video caches) serves every epoch, including a resumed partial one."""

    def __init__(self) -> None:
        self.indices: List[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


def _make_loader(dataset, sampler: _EpochSampler, batch_size: int, num_workers: int, seed: int):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # epoch (new iterator mid-epoch) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


def _rng_state() -> Dict:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Cheap weight fingerprint used to prove all ranks ended with the same online weights."""
    vals = [p.detach().double().flatten() for p in model.parameters()]
    flat = torch.cat(vals)
    idx = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * torch.sin(idx)).sum(), flat.abs().max()])


def pretrain(cfg: PretrainConfig) -> Dict:
    """Run (or resume) pretraining; returns a summary dict. Only rank 0 writes files."""
    env = _Dist(cfg.device)
    try:
        return _Trainer(cfg, env).run()
    finally:
        env.close()


class _Trainer:
    def __init__(self, cfg: PretrainConfig, env: _Dist):
        self.cfg, self.env = cfg, env
        check_model_name(cfg.model)
        if cfg.ema_schedule not in EMA_SCHEDULES:
            raise ValueError(f"ema_schedule must be one of {', '.join(EMA_SCHEDULES)}, got {cfg.ema_schedule!r}")
        if cfg.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {cfg.amp!r}")
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

        self.model = build_model(cfg).to(env.device)
        self.optimizer = build_optimizer(self.model, self.base_lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.ddp = self.model
        if env.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        self.stop_requested = False
        self.sampler = _EpochSampler()
        self.loader = _make_loader(self.dataset, self.sampler, cfg.batch_size, cfg.num_workers, cfg.seed)
        self.step = 0
        self.epoch = 0
        self.micro_done = 0  # micro-batches done in the current epoch
        self.out = cfg.output_dir
        self.ckpt_path = os.path.join(self.out, CHECKPOINT)

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> Dict:
        return dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.step,
            epoch=self.epoch,
            micro_done=self.micro_done,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            base_lr=self.base_lr,
            rng=_rng_state(),
            config=self.cfg.to_dict(),
            world_size=self.env.world,
            version=1,
        )

    def save(self) -> None:
        if self.env.main:
            atomic_save(self.state(), self.ckpt_path)
        self.env.barrier()

    def resume(self, path: str) -> None:
        ck = load_checkpoint(path, map_location=self.env.device)
        if ck["config"]["model"] != self.cfg.model:
            raise ValueError(f"checkpoint {path} is for {ck['config']['model']}, not {self.cfg.model}")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.micro_done = ck["step"], ck["epoch"], ck["micro_done"]
        if ck.get("world_size", 1) == self.env.world:
            _set_rng_state(ck["rng"])

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Dict:
        cfg, env = self.cfg, self.env
        if env.main:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.json"), "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        env.barrier()
        if cfg.resume:
            self.resume(cfg.resume)
        log = open(os.path.join(self.out, METRICS), "a") if env.main else None
        self.tb = _tensorboard(self.out) if env.main else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (env.main and cfg.progress),
            desc=f"pretrain {cfg.model}",
            dynamic_ncols=True,
        )
        autocast = dict(
            device_type=env.device.type,
            dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16,
            enabled=cfg.amp != "none",
        )
        self.model.train()
        start_step = self.step
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        last_batch, t0, pairs = None, time.perf_counter(), 0
        sums: Dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                indices = _epoch_indices(len(self.dataset), self.epoch, cfg.seed, env.world, env.rank)
                usable = self.steps_per_epoch * cfg.accum_iter
                # this epoch's full batches, less those a resumed run already did
                self.sampler.indices = indices[self.micro_done * cfg.batch_size : usable * cfg.batch_size]
                for frame1, frame2 in self.loader:
                    frame1 = frame1.to(env.device, non_blocking=True)
                    frame2 = frame2.to(env.device, non_blocking=True)
                    lr = learning_rate(self.step, self.total_steps, self.warmup_steps, self.base_lr, cfg.min_lr)
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                    boundary = (self.micro_done + 1) % cfg.accum_iter == 0
                    # DDP all-reduces gradients only on the micro-batch that ends an accumulation
                    no_sync = self.ddp.no_sync() if (env.world > 1 and not boundary) else contextlib.nullcontext()
                    with no_sync:
                        with torch.autocast(**autocast):
                            out = self.ddp(frame1, frame2)
                        loss = out["loss"]
                        if not self._all_finite(loss):
                            raise FloatingPointError(self._nan_message(loss))
                        self.scaler.scale(loss / cfg.accum_iter).backward()
                    for k, v in out.items():
                        if k.startswith("loss"):
                            sums[k] = sums.get(k, 0.0) + float(v.detach())
                    sums["n"] = sums.get("n", 0) + 1
                    self.micro_done += 1
                    pairs += frame1.shape[0] * env.world
                    last_batch = (frame1, frame2, out)
                    if not boundary:
                        continue
                    if cfg.clip_grad:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.online.parameters(), cfg.clip_grad)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    momentum = ema_momentum(self.step, self.total_steps, cfg.ema_base, cfg.ema_final,
                                            cfg.ema_schedule, self.steps_per_epoch)  # fmt: skip
                    self.model.update_target(momentum)
                    self.step += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        rate = pairs / max(time.perf_counter() - t0, 1e-9)
                        self._log(log, bar, sums, lr, momentum, rate)
                        sums, t0, pairs = {}, time.perf_counter(), 0
                    if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                        self.save()
                    if self.step >= self.total_steps or self._should_stop(start_step):
                        break
                if self.micro_done >= usable:  # the epoch is complete
                    self.epoch, self.micro_done = self.epoch + 1, 0
                    if env.main and last_batch is not None and cfg.vis_every and self.epoch % cfg.vis_every == 0:
                        self._figure(last_batch, f"recon_epoch{self.epoch:04d}.png")
                if self.step >= self.total_steps or self._should_stop(start_step):
                    break
        finally:
            bar.close()
            if log:
                log.close()
            if self.tb is not None:
                self.tb.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.save()
        if self.step < self.total_steps:
            msg = "SIGTERM received" if self.stop_requested else f"--stop-after {self.cfg.stop_after} reached"
            if env.main:
                print(f"{msg}: stopped at step {self.step}/{self.total_steps}; resume with --resume {self.out}")
            return dict(step=self.step, stopped=True, checkpoint=self.ckpt_path)
        return self._finish(last_batch)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (so all ranks stop together, none hangs)."""
        ok = torch.isfinite(loss.detach()).float().reshape(1)
        if self.env.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _nan_message(self, loss: torch.Tensor) -> str:
        where = (
            f"The last good checkpoint is {self.ckpt_path}."
            if os.path.exists(self.ckpt_path)
            else "No checkpoint was written yet."
        )
        return (
            f"loss is {loss.item()} at step {self.step} (epoch {self.epoch}); stopping. {where} "
            "Try a lower --blr, --clip-grad 1.0, or --amp none."
        )

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _should_stop(self, start_step: int) -> bool:
        stop = self.stop_requested or (
            self.cfg.stop_after is not None and self.step - start_step >= self.cfg.stop_after
        )
        if self.env.world > 1:  # every rank must stop at the same step
            flag = torch.tensor([float(stop)], device=self.env.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _log(self, log, bar, sums: Dict, lr: float, momentum: float, rate: float) -> None:
        n = max(1, sums.pop("n", 1))
        means = torch.tensor([sums[k] / n for k in sorted(sums)], dtype=torch.float64)
        means = self.env.mean(means.to(self.env.device)).cpu()
        rec = dict(step=self.step, epoch=self.epoch)
        rec.update({k: float(v) for k, v in zip(sorted(sums), means)})
        rec.update(lr=lr, momentum=momentum, pairs_per_sec=rate)
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if self.tb is not None:
                for k, v in rec.items():
                    if k not in ("step", "epoch"):
                        self.tb.add_scalar(f"pretrain/{k}", v, self.step)
            bar.set_postfix(
                loss=f"{rec['loss']:.4f}", o=f"{rec['loss_online']:.3f}", t=f"{rec['loss_target']:.3f}",
                c=f"{rec['loss_consistency']:.4f}", lr=f"{lr:.2e}", m=f"{momentum:.4f}", pps=f"{rate:.1f}",
            )  # fmt: skip

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
        summary = dict(
            step=self.step,
            epoch=self.epoch,
            world_size=env.world,
            effective_batch=self.eff_batch,
            ranks_in_sync=in_sync,
            checkpoint=self.ckpt_path,
        )
        if env.main:
            if last_batch is not None:
                summary["figure"] = self._figure(last_batch, "reconstruction.png")
            if self.cfg.export:
                summary["encoder"] = os.path.join(self.out, ENCODER)
                save_encoder(self.model, summary["encoder"])
            with open(os.path.join(self.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
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


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
