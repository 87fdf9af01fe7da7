"""Label-propagation throughput: :func:`propagate_frames` (local windows) vs the naive dense form."""

from __future__ import annotations

import time
from typing import Dict, Optional, Union

import torch

from videomac.bench.common import sync
from videomac.eval.propagation import PropagationConfig, propagate_dense, propagate_frames

__all__ = ["bench_propagation"]


@torch.no_grad()
def bench_propagation(
    num_frames: int = 24,
    height: int = 60,
    width: int = 107,
    channels: int = 512,
    num_labels: int = 8,
    config: Optional[PropagationConfig] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    dense: bool = True,
    tile: int = 8,
    max_chunk_mb: float = 256.0,
    query_chunk: int = 1024,
    seed: int = 0,
) -> Dict[str, object]:
    """Frames/s of propagating ``num_labels`` soft maps through ``num_frames`` random feature maps of
    ``channels x height x width`` (default: stride-8 features of a 480x854 frame, ResNet-18 layer4).

    Both implementations run on the same inputs; ``max_abs_diff`` and ``argmax_equal`` (fraction of
    cells with the same argmax label) compare their outputs. ``*_fps`` count all propagated frames;
    ``*_fps_steady`` only frames past ``n_context`` (full context of distinct frames), if any.
    """
    cfg = config or PropagationConfig()
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(num_frames, channels, height, width, generator=g).to(device, dtype)
    labels = torch.softmax(3 * torch.randn(num_labels, height, width, generator=g), 0).to(device)

    sync(device)
    t_all = time.perf_counter()
    local, local_t = [], []  # the loop eval and propagate run; frame 0's time (setup) is not a frame's
    t0 = t_all
    for maps in propagate_frames(feats, labels, cfg, tile=tile, max_chunk_mb=max_chunk_mb):
        local.append(maps)
        sync(device)
        local_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    local_t = local_t[1:]
    local_total = time.perf_counter() - t_all
    local = torch.stack(local)

    def fps(ts):
        return len(ts) / sum(ts) if ts else float("nan")

    steady = slice(cfg.n_context, None)
    out: Dict[str, object] = {
        "frames": num_frames,
        "feature_map": [height, width],
        "channels": channels,
        "labels": num_labels,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "config": cfg.__dict__,
        "tile": tile,
        "local_fps": (num_frames - 1) / local_total,
        "local_fps_steady": fps(local_t[steady]),
    }
    if device.type == "cuda":
        out["local_peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if dense:
        dense_t = []
        ref = propagate_dense(feats, labels, cfg, query_chunk=query_chunk, timings=dense_t)
        out["dense_fps"] = fps(dense_t)
        out["dense_fps_steady"] = fps(dense_t[steady])
        out["speedup"] = out["dense_fps"] and out["local_fps"] / out["dense_fps"]
        out["max_abs_diff"] = float((local.float() - ref.float()).abs().max())
        out["argmax_equal"] = float((local.argmax(1) == ref.argmax(1)).float().mean())
    return out
