"""Label propagation with frozen features (the CRW protocol, Jabri et al. 2020).

For target frame ``t`` the context is the first frame (with its ground-truth labels) plus the previous
``n_context`` frames (with their propagated labels). As in CRW's ``test.py`` -- which pads the video
with ``n_context`` copies of frame 0 -- context indices before the start are clamped to 0, so early
frames see several copies of frame 0. Each query position scores every context position by the dot
product of L2-normalized features; positions in the ``n_context`` recent frames count only within the
spatial radius (``dy**2 + dx**2 < radius**2`` in feature cells, CRW's ``MaskedAttention``), while the
first frame is CRW's "long-term memory" and is searched everywhere unless ``restrict_first`` is set.
The ``topk`` best scores over all context positions are softmax-ed at ``temperature`` and the label
maps of those positions are averaged with these weights.

:class:`LabelPropagator` computes this with local windows: queries are processed in square tiles,
each tile is matched (one matrix product) against the key region its windows can reach, and only the
in-radius entries are kept -- memory stays bounded at any resolution. :func:`propagate_dense` is the
naive reference (full affinity matrix, radius applied as a mask) used by tests and the benchmark.
:func:`propagate_frames` is the loop over a video's frames that every evaluation and ``videomac
propagate`` iterate.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from videomac.eval.settings import PropagationConfig  # the one definition; re-exported here

__all__ = [
    "PropagationConfig",
    "context_indices",
    "radius_offsets",
    "LabelPropagator",
    "propagate",
    "propagate_frames",
    "propagate_dense",
    "labels_to_onehot",
    "resize_labels",
]


def context_indices(t: int, n_context: int) -> List[int]:
    """Context frames of target ``t >= 1``: ``[0]`` (long-term) + the previous ``n_context``, clamped at 0."""
    return [0] + [max(0, t - k) for k in range(n_context, 0, -1)]


def radius_offsets(radius: float) -> torch.Tensor:
    """``(P, 2)`` integer ``(dy, dx)`` offsets with ``dy**2 + dx**2 < radius**2``, row-major."""
    R = max(0, math.ceil(radius) - 1)
    d = torch.arange(-R, R + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = (dy**2 + dx**2).double() < float(radius) ** 2
    return torch.stack([dy[keep], dx[keep]], 1)


def labels_to_onehot(label_map: torch.Tensor, ids: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """``(K, H, W)`` one-hot maps of an integer ``(H, W)`` map for the label values ``ids`` (in order)."""
    label_map = torch.as_tensor(label_map)
    return torch.stack([(label_map == int(i)) for i in ids]).to(dtype)


def resize_labels(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (half-pixel centres, no antialias: OpenCV's INTER_LINEAR as CRW uses) of ``(K, H, W)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    dtype = maps.dtype
    out = F.interpolate(
        maps[None].float() if not maps.is_floating_point() else maps[None],
        size=tuple(size),
        mode="bilinear",
        align_corners=False,
    )
    return out[0].to(dtype) if dtype.is_floating_point else out[0]


def _normalize(feat: torch.Tensor) -> torch.Tensor:
    # Normalize in at least float32 so half-precision features do not lose the norm.
    x = feat.to(torch.promote_types(feat.dtype, torch.float32))
    return F.normalize(x, dim=0).to(feat.dtype)


def _channels_last(flat: torch.Tensor) -> torch.Tensor:
    # (C, N) -> (N, C): gathering whole feature vectors (rows) is much faster than strided columns.
    return flat.t().contiguous()


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _Geometry:
    """Index tables of the tiled local-window search for one feature-map size (built once per size)."""

    def __init__(self, h: int, w: int, radius: float, tile: int, device):
        off = radius_offsets(radius)
        R = max(0, math.ceil(radius) - 1)
        T = tile
        ny, nx = -(-h // T), -(-w // T)
        self.h, self.w, self.R, self.T, self.P = h, w, R, T, off.shape[0]
        self.Hp, self.Wp = ny * T + 2 * R, nx * T + 2 * R
        self.side = T + 2 * R
        self.L = self.side**2
        self.n_tiles = ny * nx
        ty, tx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        ty, tx = ty.reshape(-1, 1, 1), tx.reshape(-1, 1, 1)  # (N, 1, 1)
        a, b = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
        a, b = a.reshape(1, -1, 1), b.reshape(1, -1, 1)  # (1, TT, 1)
        dy, dx = off[:, 0].reshape(1, 1, -1), off[:, 1].reshape(1, 1, -1)  # (1, 1, P)
        i, j = torch.meshgrid(torch.arange(self.side), torch.arange(self.side), indexing="ij")
        self.region = ((ty * T + i.reshape(1, 1, -1)) * self.Wp + tx * T + j.reshape(1, 1, -1))[:, 0]  # (N, L)
        self.qidx = ((R + ty * T + a) * self.Wp + R + tx * T + b)[..., 0]  # (N, TT)
        self.local = ((a + R + dy) * self.side + b + R + dx)[0]  # (TT, P)
        ky, kx = ty * T + a + dy, tx * T + b + dx  # (N, TT, P) absolute key coordinates
        self.valid = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
        self.abs_key = (R + ky) * self.Wp + R + kx  # (N, TT, P) flat index into the padded map
        for name in ("region", "qidx", "local", "valid", "abs_key"):
            setattr(self, name, getattr(self, name).to(device))
        self._penalty: Dict[torch.dtype, torch.Tensor] = {}

    def penalty(self, dtype: torch.dtype) -> torch.Tensor:
        """``(N, TT, P)`` additive mask: 0 for keys inside the image, -inf for keys off its edge."""
        if dtype not in self._penalty:
            self._penalty[dtype] = torch.zeros(self.valid.shape, dtype=dtype, device=self.valid.device).masked_fill(
                ~self.valid, float("-inf")
            )
        return self._penalty[dtype]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(C, h, w)`` -> zero-padded flat ``(C, Hp * Wp)``."""
        R = self.R
        x = F.pad(x, (R, self.Wp - self.w - R, R, self.Hp - self.h - R))
        return x.reshape(x.shape[0], -1)

    def crop(self, flat: torch.Tensor) -> torch.Tensor:
        R = self.R
        return flat.reshape(flat.shape[0], self.Hp, self.Wp)[:, R : R + self.h, R : R + self.w]


class LabelPropagator:
    """Streaming local-window label propagation: feed frames one at a time with :meth:`step`.

    ``first_feat`` ``(C, h, w)`` and ``first_labels`` ``(K, h, w)`` (soft/one-hot maps at feature
    resolution) define frame 0; each :meth:`step` takes the next frame's features and returns its
    ``(K, h, w)`` propagated maps. Features are L2-normalized here unless ``normalize=False``.
    Only frame 0 and the last ``n_context`` frames are kept. ``max_chunk_mb`` bounds the working
    memory of one chunk of query tiles. Deterministic on CPU and CUDA; pass bf16/fp16 features on
    CUDA for speed (scores, top-k and softmax are still done in float32).
    """

    def __init__(
        self,
        first_feat: torch.Tensor,
        first_labels: torch.Tensor,
        config: Optional[PropagationConfig] = None,
        *,
        tile: int = 8,
        max_chunk_mb: float = 256.0,
        normalize: bool = True,
    ):
        self.cfg = config or PropagationConfig()
        if first_feat.ndim != 3 or first_labels.ndim != 3 or first_feat.shape[-2:] != first_labels.shape[-2:]:
            raise ValueError(
                f"need first_feat (C, h, w) and first_labels (K, h, w) of the same h, w; got "
                f"{tuple(first_feat.shape)} and {tuple(first_labels.shape)}"
            )
        self.normalize = normalize
        self.device = first_feat.device
        C, h, w = first_feat.shape
        self.geo = _Geometry(h, w, self.cfg.radius, tile, self.device)
        self.max_chunk_bytes = max_chunk_mb * 2**20
        self.t = 0
        feat0 = _normalize(first_feat) if normalize else first_feat
        labels0 = first_labels.to(self.device)
        self._feat0 = feat0.reshape(C, -1)
        self._labels0 = labels0.reshape(labels0.shape[0], -1)
        # frame index -> (padded keys (Hp*Wp, C), padded label maps (K, Hp*Wp))
        self._bank: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {
            0: (_channels_last(self.geo.pad(feat0)), self.geo.pad(labels0))
        }

    @torch.no_grad()
    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """Propagate to the next frame; returns its ``(K, h, w)`` label maps."""
        geo, cfg = self.geo, self.cfg
        C = self._feat0.shape[0]
        if tuple(feat.shape) != (C, geo.h, geo.w):
            raise ValueError(f"expected features {(C, geo.h, geo.w)}, got {tuple(feat.shape)}")
        self.t += 1
        t = self.t
        q = _normalize(feat) if self.normalize else feat
        q_cl = _channels_last(geo.pad(q.to(self.device)))
        ctx = context_indices(t, cfg.n_context)
        restricted = ctx if cfg.restrict_first else ctx[1:]
        # Clamped context repeats frame 0: score each distinct frame once and carry its multiplicity.
        unique = sorted(set(restricted))
        mult = [restricted.count(f) for f in unique]
        HW, P, TT, k = geo.Hp * geo.Wp, geo.P, geo.T**2, cfg.topk
        off = 0 if cfg.restrict_first else geo.h * geo.w
        bank = torch.cat(([] if cfg.restrict_first else [self._labels0]) + [self._bank[f][1] for f in unique], 1)
        sdt = _score_dtype(q.dtype)
        penalty = geo.penalty(sdt)

        per_tile = q.element_size() * C * geo.L + 4 * TT * (geo.L + 2 * P + 2 * off)
        chunk = int(max(1, min(geo.n_tiles, self.max_chunk_bytes // per_tile)))
        out = torch.zeros(bank.shape[0], HW, dtype=bank.dtype, device=self.device)
        for s in range(0, geo.n_tiles, chunk):
            e = min(geo.n_tiles, s + chunk)
            nc = e - s
            Q = q_cl[geo.qidx[s:e]]  # (nc, TT, C)
            vals, cols, mults = [], [], []
            if off:
                G = (Q.reshape(nc * TT, C) @ self._feat0).to(sdt) / cfg.temperature
                v, i = torch.topk(G, min(k, off), dim=1)
                vals.append(v)
                cols.append(i)
                mults.append(torch.ones_like(i))
            local = geo.local.expand(nc, TT, P)
            abs_key = geo.abs_key[s:e].reshape(nc * TT, P)
            for u, f in enumerate(unique):
                reg = self._bank[f][0][geo.region[s:e]]  # (nc, L, C)
                S = torch.bmm(Q, reg.transpose(1, 2)).gather(2, local).to(sdt)  # (nc, TT, P)
                S = ((S + penalty[s:e]) / cfg.temperature).reshape(nc * TT, P)
                v, i = torch.topk(S, min(k, P), dim=1)
                vals.append(v)
                cols.append(off + u * HW + abs_key.gather(1, i))
                mults.append(torch.full_like(i, mult[u]))
            # The top-k of a union is the top-k of the union of the parts' top-k.
            allv = torch.cat(vals, 1)
            v, j = torch.topk(allv, min(k, allv.shape[1]), dim=1)
            col = torch.cat(cols, 1).gather(1, j)
            m = torch.cat(mults, 1).gather(1, j)
            # Repeated candidates fill several of the k slots: softmax over the expanded list.
            taken = (k - (m.cumsum(1) - m)).clamp(min=0)
            cnt = torch.minimum(m, taken).to(v.dtype)
            wexp = cnt * torch.exp(v - v[:, :1])
            weights = wexp / wexp.sum(1, keepdim=True)
            pred = (bank[:, col] * weights.to(bank.dtype)[None]).sum(-1)  # (K, nc*TT)
            out[:, geo.qidx[s:e].reshape(-1)] = pred
        pred = geo.crop(out)

        self._bank[t] = (q_cl, geo.pad(pred))
        for f in [f for f in self._bank if f != 0 and f < t + 1 - cfg.n_context]:
            del self._bank[f]
        return pred


def propagate_frames(
    feats: Iterable[torch.Tensor],
    first_labels: torch.Tensor,
    config: Optional[PropagationConfig] = None,
    **kwargs,
) -> Iterator[torch.Tensor]:
    """Label maps of every frame of a video, streamed: the one propagation loop of ``eval`` and ``propagate``.

    ``feats`` yields each frame's ``(C, h, w)`` features in order (consumed one at a time, so frames
    can be decoded and encoded lazily); ``first_labels`` ``(K, H, W)`` are frame 0's maps, bilinearly
    resized to the features' ``(h, w)`` (:func:`resize_labels`). Yields ``(K, h, w)`` maps: frame 0's
    resized labels, then each next frame's propagated maps. The context queue (frame 0 plus the last
    ``n_context`` frames) lives in :class:`LabelPropagator`, which gets ``kwargs``.
    """
    it = iter(feats)
    first = next(it, None)
    if first is None:
        return
    labels = resize_labels(first_labels.to(first.device), first.shape[-2:])
    prop = LabelPropagator(first, labels, config, **kwargs)
    yield labels
    for f in it:
        yield prop.step(f)


def propagate(
    feats: Union[torch.Tensor, Iterable[torch.Tensor]],
    first_labels: torch.Tensor,
    config: Optional[PropagationConfig] = None,
    **kwargs,
) -> torch.Tensor:
    """Propagate ``first_labels`` ``(K, h, w)`` through ``feats`` ``(T, C, h, w)`` -> ``(T, K, h, w)``.

    Frame 0 of the result is ``first_labels`` (resized if given at another size, see
    :func:`propagate_frames`). ``kwargs`` go to :class:`LabelPropagator`.
    """
    return torch.stack(list(propagate_frames(feats, first_labels, config, **kwargs)))


@torch.no_grad()
def propagate_dense(
    feats: torch.Tensor,
    first_labels: torch.Tensor,
    config: Optional[PropagationConfig] = None,
    *,
    normalize: bool = True,
    query_chunk: Optional[int] = None,
    timings: Optional[List[float]] = None,
) -> torch.Tensor:
    """Naive reference: full ``(hw, n * hw)`` affinities per target with the radius as a mask.

    ``query_chunk`` only splits the queries to bound memory; the computation is unchanged.
    ``timings``, if given, receives the seconds spent on each target frame.
    """
    cfg = config or PropagationConfig()
    T, C, h, w = feats.shape
    hw = h * w
    f = torch.stack([_normalize(x) for x in feats]) if normalize else feats
    f = f.reshape(T, C, hw)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yy, xx = yy.reshape(-1).to(feats.device), xx.reshape(-1).to(feats.device)
    near = ((yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2).double() < float(cfg.radius) ** 2
    labels = [first_labels.reshape(first_labels.shape[0], hw).to(feats.device)]
    sdt = _score_dtype(feats.dtype)
    qc = query_chunk or hw
    for t in range(1, T):
        t0 = time.perf_counter()
        ctx = context_indices(t, cfg.n_context)
        keys = f[ctx]  # (n+1, C, hw)
        lab = torch.stack([labels[i] for i in ctx], 1).reshape(labels[0].shape[0], -1)  # (K, (n+1)*hw)
        restricted = torch.ones(len(ctx), dtype=torch.bool, device=feats.device)
        restricted[0] = cfg.restrict_first
        pred = []
        for s in range(0, hw, qc):
            A = torch.einsum("cq,nck->qnk", f[t][:, s : s + qc], keys).to(sdt)
            mask = restricted[None, :, None] & ~near[s : s + qc, None, :]
            A = A.masked_fill(mask, float("-inf")).reshape(A.shape[0], -1)
            vals, idx = torch.topk(A / cfg.temperature, min(cfg.topk, A.shape[1]), dim=1)
            weights = torch.softmax(vals, dim=1)
            pred.append((lab[:, idx] * weights.to(lab.dtype)[None]).sum(-1))
        labels.append(torch.cat(pred, 1))
        if timings is not None:
            if labels[-1].is_cuda:
                torch.cuda.synchronize(labels[-1].device)
            timings.append(time.perf_counter() - t0)
    return torch.stack(labels).reshape(T, -1, h, w)
