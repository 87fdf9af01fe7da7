"""Seeded procedural videos with exact per-pixel object labels.

Used as the built-in pretraining data (no downloads needed) and as a label-propagation benchmark with
known ground truth. A video is a textured background panning under a moving camera plus a few textured
shapes (ellipses, rectangles, convex polygons) that translate, rotate and scale smoothly and occlude
each other in a fixed depth order (object ``k`` is in front of objects ``< k``).
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from videomac.palette import davis_palette

__all__ = ["render_video", "write_frames", "write_video", "write_palette_png", "davis_palette"]


def _resize_bilinear(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling of a ``(h, w, C)`` grid to ``(H, W, C)`` (align-corners)."""
    h, w = a.shape[:2]
    y = np.linspace(0, h - 1, H)
    x = np.linspace(0, w - 1, W)
    y0 = np.minimum(y.astype(np.int64), h - 2)
    x0 = np.minimum(x.astype(np.int64), w - 2)
    fy = (y - y0)[:, None, None]
    fx = (x - x0)[None, :, None]
    a00, a01 = a[y0][:, x0], a[y0][:, x0 + 1]
    a10, a11 = a[y0 + 1][:, x0], a[y0 + 1][:, x0 + 1]
    return (a00 * (1 - fx) + a01 * fx) * (1 - fy) + (a10 * (1 - fx) + a11 * fx) * fy


def _smooth_noise(rng: np.random.Generator, H: int, W: int, octaves=(3, 6, 12, 24)) -> np.ndarray:
    """Multi-scale value noise in roughly ``[-1, 1]``, shape ``(H, W, 3)``."""
    out = np.zeros((H, W, 3))
    for i, cells in enumerate(octaves):
        gh = max(2, int(round(cells * H / max(H, W))) + 1)
        gw = max(2, int(round(cells * W / max(H, W))) + 1)
        out += _resize_bilinear(rng.uniform(-1, 1, (gh, gw, 3)), H, W) * 0.6**i
    return out / 1.6


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` saturated random RGB colours in ``[0, 1]``."""
    hue = (rng.uniform() + np.arange(n) / n + rng.uniform(-0.1, 0.1, n)) % 1.0
    k = (hue[:, None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1)  # hsv->rgb at full saturation/value
    val = rng.uniform(0.55, 1.0, (n, 1))
    sat = rng.uniform(0.5, 1.0, (n, 1))
    return val * (1 - sat + sat * rgb)


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A colourful ``(H, W, 3)`` float canvas: tinted multi-scale noise, blobs and stripes."""
    cols = _palette(rng, 3)
    n = _smooth_noise(rng, H, W)
    img = 0.5 + 0.4 * n  # per-channel noise gives colour variation on its own
    w = np.clip(0.5 + n[..., :1], 0, 1)
    img = 0.5 * img + 0.5 * (w * cols[0] + (1 - w) * cols[1])
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    theta, period = rng.uniform(0, np.pi), rng.uniform(12, 40)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    img += 0.12 * stripes[..., None] * (cols[2] - 0.5)
    for _ in range(int(rng.integers(4, 9))):  # soft blobs for extra large-scale structure
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(0.05, 0.15) * min(H, W)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.7 * g) + 0.7 * g * _palette(rng, 1)[0]
    return np.clip(img, 0, 1)


def _object_texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in object-local coordinates (so it moves and rotates with the object): ``(..., 3)``."""
    cols = _palette(rng, 2)
    kind = int(rng.integers(3))
    f1, f2 = rng.uniform(0.15, 0.5, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)
    if kind == 0:  # checkerboard-ish
        t = np.sin(u * f1 + ph[0]) * np.sin(v * f1 + ph[1])
    elif kind == 1:  # plaid
        t = 0.5 * np.sin(u * f1 + ph[0]) + 0.5 * np.sin((u + v) * f2 * 0.7 + ph[1])
    else:  # rings
        t = np.sin(np.sqrt(u * u + v * v) * f1 + ph[0]) * 0.7 + 0.3 * np.sin(v * f2 + ph[1])
    w = (0.5 + 0.5 * t)[..., None]
    return w * cols[0] + (1 - w) * cols[1]


def _object_inside(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Random shape of size ~``r`` centred at the local origin: a bool mask over ``(u, v)``."""
    kind = int(rng.integers(3))
    a, b = r * rng.uniform(0.7, 1.2), r * rng.uniform(0.5, 1.0)
    if kind == 0:
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:
        return (np.abs(u) <= a * 0.85) & (np.abs(v) <= b * 0.85)
    k = int(rng.integers(3, 8))
    # Jittered, evenly spread angles keep the polygon convex-ish and never degenerate.
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.3, 0.3, k) * 2 * np.pi / k
    ang = ang + rng.uniform(0, 2 * np.pi)
    rad = r * rng.uniform(0.75, 1.15, k)
    px, py = rad * np.cos(ang), rad * np.sin(ang)  # counter-clockwise convex-ish polygon
    inside = np.ones(u.shape, dtype=bool)
    for i in range(k):
        j = (i + 1) % k
        inside &= (px[j] - px[i]) * (v - py[i]) - (py[j] - py[i]) * (u - px[i]) >= 0
    return inside


def _smooth_path(rng: np.random.Generator, T: int, amp: float) -> np.ndarray:
    """A smooth 1-D trajectory of length ``T``: drift plus two low-frequency sinusoids, in ``[-amp, amp]``."""
    t = np.linspace(0, 1, T)
    p = rng.uniform(-0.5, 0.5) * (t - 0.5)
    for _ in range(2):
        freq, phase = rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi)
        p = p + rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * freq * t + phase)
    return amp * p / max(1e-6, np.abs(p).max())


def render_video(
    seed: int, num_frames: int = 32, size: Tuple[int, int] = (192, 256), num_objects: int = 3
) -> Tuple[np.ndarray, np.ndarray]:
    """Render one synthetic video, deterministic in ``seed``.

    Returns ``frames`` uint8 ``(T, H, W, 3)`` and ``labels`` uint8 ``(T, H, W)`` where 0 is background
    and ``k`` is object ``k`` (higher ids are in front). Every object keeps a visible part in every frame.
    """
    if num_frames < 1 or num_objects < 0 or num_objects > 255:
        raise ValueError(f"need num_frames >= 1 and 0 <= num_objects <= 255, got {num_frames}, {num_objects}")
    H, W = int(size[0]), int(size[1])
    T = int(num_frames)
    rng = np.random.default_rng(seed)

    # Camera pan: crop a moving window out of a larger canvas with sub-pixel bilinear shifts.
    margin = max(8, int(0.15 * min(H, W)))
    canvas = _background(rng, H + 2 * margin + 1, W + 2 * margin + 1)
    oy = margin + _smooth_path(rng, T, margin * 0.95)
    ox = margin + _smooth_path(rng, T, margin * 0.95)
    frames = np.empty((T, H, W, 3))
    for t in range(T):
        iy, ix = int(oy[t]), int(ox[t])
        fy, fx = oy[t] - iy, ox[t] - ix
        c = canvas[iy : iy + H + 1, ix : ix + W + 1]
        top = c[:H, :W] * (1 - fx) + c[:H, 1:] * fx
        bottom = c[1:, :W] * (1 - fx) + c[1:, 1:] * fx
        frames[t] = top * (1 - fy) + bottom * fy

    full = np.mgrid[0:H, 0:W].astype(np.float32)
    coarse = full[:, ::4, ::4]
    for _attempt in range(20):
        # Re-draw object layouts until every object stays visible (checked on a coarse grid, for
        # speed); retries draw from the same rng, so the video is still a pure function of the seed.
        objs = []
        for _k in range(num_objects):
            r = rng.uniform(0.15, 0.27) * min(H, W)
            cy = rng.uniform(0.3, 0.7) * H + _smooth_path(rng, T, 0.2 * H)
            cx = rng.uniform(0.3, 0.7) * W + _smooth_path(rng, T, 0.25 * W)
            th = rng.uniform(0, 2 * np.pi) + _smooth_path(rng, T, rng.uniform(0.1, 0.6))
            sc = 1.0 + _smooth_path(rng, T, rng.uniform(0.0, 0.15))
            objs.append((r, cy, cx, th, sc, *rng.integers(2**63, size=2)))
        masks = [_place(o, coarse)[0] for o in objs]
        lab = _compose(masks, coarse.shape[1:], T)
        area = np.array([m.sum(axis=(1, 2)) for m in masks]).reshape(num_objects, T)
        vis = np.array([(lab == k).sum(axis=(1, 2)) for k in range(1, num_objects + 1)])
        if num_objects == 0 or (vis.reshape(num_objects, T) >= 0.3 * np.maximum(area, 1)).all():
            break
    placed = [_place(o, full) for o in objs]
    labels = _compose([m for m, _, _ in placed], (H, W), T)
    for k, ((_, u, v), o) in enumerate(zip(placed, objs), 1):
        m = labels == k  # texture only the visible pixels: it dominates the cost otherwise
        frames[m] = _object_texture(np.random.default_rng(o[6]), u[m], v[m])
    frames = np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames, labels


def _place(obj: tuple, grid: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An object's ``(T, h, w)`` mask and local coordinates ``u, v`` on a ``(2, h, w)`` pixel grid."""
    r, cy, cx, th, sc, shape_seed, _ = obj
    dy = grid[0][None] - cy.astype(np.float32)[:, None, None]
    dx = grid[1][None] - cx.astype(np.float32)[:, None, None]
    cos = np.cos(th).astype(np.float32)[:, None, None]
    sin = np.sin(th).astype(np.float32)[:, None, None]
    s = sc.astype(np.float32)[:, None, None]
    u, v = (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s
    return _object_inside(np.random.default_rng(shape_seed), u, v, r), u, v


def _compose(masks: list, hw: Tuple[int, int], T: int) -> np.ndarray:
    """Labels of the front-most object (later objects occlude earlier ones)."""
    lab = np.zeros((T, *hw), dtype=np.uint8)
    for k, m in enumerate(masks, 1):
        lab[m] = k
    return lab


def write_frames(frames: np.ndarray, folder: str, ext: str = "jpg", quality: int = 95) -> list:
    """Write ``(T, H, W, 3)`` uint8 frames as ``folder/00000.<ext>`` ...; returns the paths."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for t, f in enumerate(frames):
        p = os.path.join(folder, f"{t:05d}.{ext.lstrip('.')}")
        kw = {"quality": quality} if ext.lower().lstrip(".") in ("jpg", "jpeg") else {}
        Image.fromarray(np.asarray(f, dtype=np.uint8)).save(p, **kw)
        paths.append(p)
    return paths


def write_video(frames: np.ndarray, path: str, fps: int = 25) -> str:
    """Encode ``(T, H, W, 3)`` uint8 frames to an mp4 (h264 if PyAV has it, else mpeg4; yuv420p)."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    T, H, W = frames.shape[:3]
    if H % 2 or W % 2:  # yuv420p needs even sizes
        frames = frames[:, : H - H % 2, : W - W % 2]
        H, W = H - H % 2, W - W % 2
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = None
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                stream = container.add_stream(codec, rate=fps)
                break
            except Exception:  # encoder missing from this PyAV build
                continue
        if stream is None:
            raise RuntimeError("PyAV has neither an h264 nor an mpeg4 encoder")
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if stream.codec_context.name in ("libx264", "h264"):
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 8_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_palette_png(label_map: np.ndarray, path: str) -> str:
    """Save a ``(H, W)`` integer label map as a DAVIS-style indexed ('P' mode) PNG."""
    from PIL import Image

    lab = np.asarray(label_map)
    if lab.ndim != 2 or lab.min() < 0 or lab.max() > 255:
        raise ValueError(f"label map must be 2-D with values in [0, 255], got shape {lab.shape}")
    data = np.ascontiguousarray(lab, dtype=np.uint8).tobytes()
    img = Image.frombytes("P", (lab.shape[1], lab.shape[0]), data)
    img.putpalette(davis_palette().reshape(-1).tolist())
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    img.save(path)
    return path
