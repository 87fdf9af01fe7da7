"""The training loop's parts on real tensors and real signals: the one train step (accumulation, optimizer,
EMA, the NaN guard), the run state, the run plan, stopping."""

import os
import random
import signal

import numpy as np
import pytest
import torch

from videomac.pretrain.config import PretrainConfig
from videomac.pretrain.distributed import Dist
from videomac.pretrain.model import VideoMAC
from videomac.pretrain.schedule import RunPlan, build_optimizer
from videomac.pretrain.state import RunState
from videomac.pretrain.step import Trainable, train_step
from videomac.pretrain.stop import StopRequest
from videomac.pretrain.train import NonFiniteLossError


def trainable(accum_iter=1):
    torch.manual_seed(0)
    model = VideoMAC("videomac_cnxv2_atto", decoder_dim=32).train()
    return Trainable(
        model, build_optimizer(model, 1e-3), torch.amp.GradScaler("cuda", enabled=False), accum_iter=accum_iter
    )


def frames(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_accumulation_steps_once_then_moves_the_target_by_ema():
    t = trainable(accum_iter=2)
    online0, target0 = snapshot(t.model.online), snapshot(t.model.target)
    out = train_step(t, frames(0), lr=1e-3, momentum=0.9, update=False)
    assert torch.isfinite(out["loss"]) and {"mask", "pred_online", "pred_target"} <= set(out)
    # an accumulating micro-batch: gradients, no weight change
    assert all(torch.equal(v, online0[k]) for k, v in t.model.online.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.model.online.parameters())
    train_step(t, frames(1), lr=1e-3, momentum=0.9, update=True)
    online1 = t.model.online.state_dict()
    assert any(not torch.equal(v, online0[k]) for k, v in online1.items())
    assert all(p.grad is None for p in t.model.online.parameters())
    assert all(g["lr"] == 1e-3 for g in t.optimizer.param_groups)
    for k, v in t.model.target.state_dict().items():
        if v.is_floating_point():  # target <- 0.9 target + 0.1 online (after the optimizer step)
            assert torch.allclose(v, target0[k].lerp(online1[k], 0.1), atol=1e-7), k


def test_non_finite_loss_raises_before_any_weight_changes():
    t = trainable()
    online0, target0 = snapshot(t.model.online), snapshot(t.model.target)
    f1, f2 = frames()
    f1[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        train_step(t, (f1, f2), lr=1e-3, momentum=0.5)
    assert all(torch.equal(v, online0[k]) for k, v in t.model.online.state_dict().items())
    assert all(torch.equal(v, target0[k]) for k, v in t.model.target.state_dict().items())


def test_run_state_restores_position_and_every_rng():
    state = RunState(step=7, epoch=2, micro_done=3, order_workers=2)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    saved = state.state_dict()
    draws = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    back = RunState()
    assert back.load_state_dict(saved) is None
    assert (back.step, back.epoch, back.micro_done, back.order_workers) == (7, 2, 3, 2)
    assert torch.equal(torch.rand(3), draws[0]) and np.array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]
    # another number of processes: the position is kept, the RNG streams restart, with a note
    note = RunState(world=1).load_state_dict(dict(saved, rng=[saved["rng"][0]] * 2, world_size=2), "ck.pt")
    assert note.startswith("note: ck.pt was written by 2 process(es), this run has 1")
    assert back.end_epoch_if_complete(4) is False and back.end_epoch_if_complete(3) is True
    assert (back.epoch, back.micro_done) == (3, 0)


def settings(**kw):
    base = dict(batch_size=4, accum_iter=2, epochs=3, warmup_epochs=40, blr=1.5e-4, output_dir="unused")
    return PretrainConfig(**dict(base, **kw))


def test_run_plan_scales_the_lr_and_caps_the_warmup():
    plan = RunPlan.of(settings(), pairs=100, world=2)  # 50 pairs a rank: 12 micro-batches, 6 steps an epoch
    assert (plan.steps_per_epoch, plan.total_steps, plan.epoch_micro_batches) == (6, 18, 12)
    assert plan.effective_batch == 16 and plan.base_lr == 1.5e-4 * 16 / 256
    assert plan.warmup_steps == 9 and plan.last_epoch == 3  # 40 epochs of warm-up: capped at half the run
    with pytest.raises(ValueError, match="too small for batch 4 x accum 2 x 2"):
        RunPlan.of(settings(), pairs=12, world=2)
    with pytest.raises(ValueError, match="--min-lr 1 is above the lr"):
        RunPlan.of(settings(min_lr=1), pairs=100, world=2)


def test_a_signal_asks_for_a_stop_and_a_second_ctrl_c_aborts():
    single = Dist("cpu")  # one process: its own flag
    run = RunState(step=4)
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest(run, stop_after=10, main=False)
    with stop.catching():
        assert not stop.due(3, single)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.due(0, single) and stop.signal_name == "SIGTERM" and stop.reason() == "SIGTERM received"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    assert StopRequest(run, stop_after=2).due(2, single) and StopRequest(run, 2).reason() == "--stop-after 2 reached"
