"""Local-window propagation equals the naive dense form; protocol details."""

import pytest
import torch

from videomac.bench.propagate import bench_propagation
from videomac.eval.propagation import (
    LabelPropagator,
    PropagationConfig,
    context_indices,
    propagate,
    propagate_dense,
    radius_offsets,
)


def _inputs(T, C, h, w, K, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(T, C, h, w, generator=g, dtype=dtype)
    labels = torch.softmax(3 * torch.randn(K, h, w, generator=g, dtype=dtype), 0)
    return feats, labels


@pytest.mark.parametrize(
    "shape,cfg,tile",
    [
        ((26, 8, 14, 19, 3), PropagationConfig(), 8),  # CRW defaults, past the 20-frame context
        ((9, 6, 11, 13, 4), PropagationConfig(n_context=3, radius=4, topk=5), 4),
        ((7, 5, 9, 10, 3), PropagationConfig(n_context=2, radius=2.5, topk=3, restrict_first=True), 3),
        ((6, 4, 7, 9, 2), PropagationConfig(n_context=4, radius=1, topk=40, restrict_first=True), 5),
    ],
)
def test_local_equals_dense(shape, cfg, tile):
    feats, labels = _inputs(*shape)
    local = propagate(feats, labels, cfg, tile=tile, max_chunk_mb=0.02)  # tiny chunks: many chunks
    dense = propagate_dense(feats, labels, cfg, query_chunk=37)
    assert local.shape == dense.shape == (shape[0], shape[4], shape[2], shape[3])
    torch.testing.assert_close(local, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(local[0], labels)


def test_float32_and_unnormalized_inputs():
    feats, labels = _inputs(12, 16, 10, 12, 3, seed=1, dtype=torch.float32)
    cfg = PropagationConfig(n_context=5)
    a = propagate(feats * 7.0, labels, cfg)  # scale must not matter: features are L2-normalized
    b = propagate_dense(feats, labels, cfg)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_static_video_keeps_labels_and_bounded_memory():
    feats, labels = _inputs(1, 32, 12, 15, 4, seed=2)
    labels = torch.nn.functional.one_hot(labels.argmax(0), 4).permute(2, 0, 1).double()
    prop = LabelPropagator(feats[0], labels, PropagationConfig(n_context=10))
    for _ in range(12):
        out = prop.step(feats[0])
        torch.testing.assert_close(out, labels)  # >= topk copies of itself win every query
    assert sorted(prop._bank) == [0] + list(range(3, 13))  # frame 0 + the last n_context frames only


def test_protocol_helpers():
    assert context_indices(1, 3) == [0, 0, 0, 0]
    assert context_indices(2, 3) == [0, 0, 0, 1]
    assert context_indices(10, 3) == [0, 7, 8, 9]
    off = radius_offsets(12)
    assert len(off) == 437 and (off**2).sum(1).max() < 144  # CRW: distance < radius
    assert len(radius_offsets(1)) == 1
    with pytest.raises(ValueError):
        PropagationConfig(topk=0)
    with pytest.raises(ValueError, match="expected features"):
        LabelPropagator(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4)).step(torch.zeros(3, 4, 5))


def test_bench_smoke():
    r = bench_propagation(num_frames=5, height=12, width=20, channels=16, num_labels=3)
    assert r["local_fps"] > 0 and r["dense_fps"] > 0
    assert r["max_abs_diff"] < 1e-5 and r["argmax_equal"] == 1.0
