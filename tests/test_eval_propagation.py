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
    propagate_frames,
    radius_offsets,
    resize_labels,
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


def test_propagate_frames_streams_one_frame_at_a_time():
    """The one loop of eval and propagate: features pulled lazily, one map out per frame in, frame 0's
    labels brought to feature resolution, the same maps as the dense reference."""
    feats, labels = _inputs(25, 6, 9, 11, 3, seed=3)  # past the 20-frame context queue
    big = resize_labels(labels, (27, 33))  # labels at image size
    pulled = []

    def lazily():
        for t, f in enumerate(feats):
            pulled.append(t)
            yield f

    steps = propagate_frames(lazily(), big, PropagationConfig(), tile=4)
    assert pulled == []  # nothing read before the first map is asked for
    maps = []
    for t, m in enumerate(steps):
        assert pulled[-1] == t  # frame t's maps come out before frame t + 1 is read
        maps.append(m)
    assert len(maps) == 25 and maps[0].shape == (3, 9, 11)
    torch.testing.assert_close(maps[0], resize_labels(big, (9, 11)), rtol=0, atol=0)
    dense = propagate_dense(feats, maps[0], PropagationConfig())
    torch.testing.assert_close(torch.stack(maps), dense, rtol=0, atol=1e-12)
    assert list(propagate_frames(iter([]), labels)) == []  # no frames, no maps


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
