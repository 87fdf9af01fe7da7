"""The fast loader: reduced-scale JPEG decoding within a stated tolerance of the authors' full-resolution
crop, unit decoding, the epoch order, DataLoader defaults, normalisation on the device, GPU decoding."""

import io
import math

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from videomac.pretrain.data import FramePairDataset, normalize_frames, random_resized_crop_params
from videomac.pretrain.decode import (
    ImageFile,
    crop_box,
    crop_resize,
    decode_jpeg_crops,
    jpeg_crop,
    reduction,
    video_frame_rgb,
)
from videomac.pretrain.loader import (
    EpochSampler,
    PairBatch,
    batch_to_device,
    collate_pairs,
    default_num_workers,
    epoch_indices,
    make_loader,
)
from videomac.synthetic import render_video, write_frames, write_video

OUT = (224, 224)


def reference(img: Image.Image, crop, out=OUT):
    """The authors' op: torchvision ``resized_crop`` on a PIL image = PIL crop, then PIL bicubic resize."""
    i, j, h, w = crop
    return np.asarray(img.crop((j, i, j + w, i + h)).resize(out[::-1], Image.BICUBIC))


def _jpegs(n=3, size=(480, 854), quality=90):
    out = []
    for f in render_video(3, n, size, num_objects=3)[0]:
        b = io.BytesIO()
        Image.fromarray(f).save(b, "JPEG", quality=quality)
        out.append(b.getvalue())
    return out


# ------------------------------------------------------------------------------ numerics vs reference
def test_full_scale_path_is_the_authors_crop_exactly():
    data = _jpegs(2)
    torch.manual_seed(0)
    for k in range(30):
        full = Image.open(io.BytesIO(data[k % 2])).convert("RGB")
        crop = random_resized_crop_params(full.height, full.width, (0.2, 1), (3 / 4, 4 / 3))
        got = jpeg_crop(ImageFile.from_bytes(data[k % 2]), crop, OUT, False, reduce=False)
        assert np.array_equal(got, reference(full, crop))
        flipped = jpeg_crop(ImageFile.from_bytes(data[k % 2]), crop, OUT, True, reduce=False)
        assert np.array_equal(flipped, reference(full, crop)[:, ::-1])


def _snapped(crop, d):
    """The crop with its edges rounded to multiples of ``d`` (the grid of a 1/d-scale decode)."""
    i, j, h, w = crop
    top, left = math.floor(i / d + 0.5) * d, math.floor(j / d + 0.5) * d
    return top, left, math.floor((i + h) / d + 0.5) * d - top, math.floor((j + w) / d + 0.5) * d - left


def test_reduced_scale_jpeg_within_tolerance_of_full_resolution():
    """DCT-scaled decoding (1/2 here), the crop's edges rounded to the 1/2-scale grid, torch's resize vs
    the authors' op (full decode + PIL bicubic) on that crop: documented bound (docs/pretraining.md):
    mean absolute difference under 1 level of 255 on average and under 2 for any crop, 99th percentile
    at most 8 levels."""
    data = _jpegs(3, size=(720, 1280))
    torch.manual_seed(0)
    means, reduced = [], 0
    for k in range(60):
        full = Image.open(io.BytesIO(data[k % 3])).convert("RGB")
        crop = random_resized_crop_params(full.height, full.width, (0.2, 1), (3 / 4, 4 / 3))
        d = reduction(crop, OUT)
        reduced += d > 1
        used = _snapped(crop, d)
        assert all(abs(a - b) <= d / 2 for a, b in zip(used[:2], crop[:2]))
        got = jpeg_crop(ImageFile.from_bytes(data[k % 3]), crop, OUT, False)
        diff = np.abs(got.astype(int) - reference(full, used))
        means.append(diff.mean())
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, k
    assert reduced > 40  # most 720p crops allow 1/2 scale
    assert np.mean(means) < 1.0


def test_fast_resize_within_two_levels_of_pil():
    """torch's uint8 antialiased bicubic (the fast path) against PIL's bicubic on the same integer crop."""
    img = Image.open(io.BytesIO(_jpegs(1, size=(480, 854))[0])).convert("RGB")
    torch.manual_seed(1)
    worst, means = 0, []
    for _ in range(30):
        crop = random_resized_crop_params(img.height, img.width, (0.05, 1), (3 / 4, 4 / 3))
        i, j, h, w = crop
        box = (j, i, j + w, i + h)
        diff = np.abs(crop_resize(img, box, OUT, False).astype(int) - reference(img, crop))
        worst, means = max(worst, diff.max()), means + [diff.mean()]
        flipped = crop_resize(np.asarray(img), box, OUT, True)
        assert np.array_equal(flipped, crop_resize(img, box, OUT, False)[:, ::-1])
        assert np.array_equal(crop_resize(img, box, OUT, False, exact=True), reference(img, crop))
    assert worst <= 2 and max(means) < 0.1 and np.mean(means) < 0.05


def test_image_file_decodes_like_pil_at_every_dct_scale():
    """simplejpeg (libjpeg-turbo) gives PIL's pixels at each DCT scale, ceil(H / d) rows for odd sizes;
    PNGs, CMYK JPEGs and JPEGs libjpeg warns about go through PIL; a truncated JPEG fails."""
    src = Image.fromarray(render_video(2, 1, (481, 853))[0][0])
    for size in [(480, 848), (481, 853)]:
        b = io.BytesIO()
        src.resize(size[::-1]).save(b, "JPEG", quality=85)
        img = ImageFile.from_bytes(b.getvalue())
        assert img.jpeg and img.hw == size
        for d in (1, 2, 4, 8):
            got = img.decode(d)
            assert got.shape == (-(-size[0] // d), -(-size[1] // d), 3) and got.dtype == np.uint8
            if size[0] % d == 0 and size[1] % d == 0:  # PIL's draft picks the same scale
                im = Image.open(io.BytesIO(b.getvalue()))
                im.draft("RGB", (size[1] // d, size[0] // d))
                assert np.array_equal(got, np.asarray(im.convert("RGB")))
    for mode, fmt in [("RGB", "PNG"), ("CMYK", "JPEG")]:
        b = io.BytesIO()
        src.convert(mode).save(b, fmt)
        img = ImageFile.from_bytes(b.getvalue())
        assert not img.jpeg and img.hw == (481, 853)
        assert np.array_equal(img.decode(4), np.asarray(Image.open(io.BytesIO(b.getvalue())).convert("RGB")))
    b = io.BytesIO()
    src.save(b, "JPEG")
    data = b.getvalue()
    warned = data[:-2] + b"\x12" * 8 + data[-2:]  # extraneous bytes before EOI: libjpeg warns, PIL decodes
    with pytest.raises(ValueError, match="extraneous"):
        simplejpeg.decode_jpeg(warned, strict=True)
    assert np.array_equal(ImageFile.from_bytes(warned).decode(2), np.asarray(Image.open(io.BytesIO(data))))
    with pytest.raises(OSError, match="truncated"):
        ImageFile.from_bytes(data[: len(data) // 2]).decode(2)


def test_reduction_never_upsamples():
    for crop in [(0, 0, 720, 1280), (0, 0, 447, 600), (0, 0, 448, 448), (0, 0, 1792, 1792), (0, 0, 100, 100)]:
        d = reduction(crop, OUT)
        assert crop[2] / d >= OUT[0] or d == 1
        assert crop[3] / d >= OUT[1] or d == 1
    assert reduction((0, 0, 448, 448), OUT) == 2 and reduction((0, 0, 447, 900), OUT) == 1
    assert reduction((0, 0, 1792, 1800), OUT) == 8


def test_video_store_size_covers_every_crop_and_stays_close():
    d = FramePairDataset(input_size=224, synthetic_videos=1, synthetic_frames=2)
    for hw in [(720, 1280), (1080, 1920), (2160, 3840), (240, 320)]:
        sh, sw = d.store_hw(hw)
        assert sh <= hw[0] and sw <= hw[1]
        if hw[0] >= 720:
            assert 300_000 < sh * sw < 360_000  # ~1 MB whatever the resolution
        torch.manual_seed(0)
        for _ in range(200):
            i, j, h, w = random_resized_crop_params(hw[0], hw[1], d.scale, d.ratio)
            assert h * sh / hw[0] >= 224 - 1e-6 or sh == hw[0]
            assert w * sw / hw[1] >= 224 - 1e-6 or sw == hw[1]
    import av

    frame = av.VideoFrame.from_ndarray(render_video(5, 1, (720, 1280))[0][0], format="rgb24")
    full = Image.fromarray(frame.to_ndarray(format="rgb24"))
    store = video_frame_rgb(frame, d.store_hw((720, 1280)))
    torch.manual_seed(1)
    for _ in range(20):
        crop = random_resized_crop_params(720, 1280, d.scale, d.ratio)
        got = crop_resize(store, crop_box(crop, (720, 1280), store.shape[:2]), OUT, False)
        assert np.abs(got.astype(int) - reference(full, crop)).mean() < 2.5


# ---------------------------------------------------------------------------------------- unit mode
def test_unit_mode_decodes_each_frame_once_and_bounds_memory(tmp_path, monkeypatch):
    write_video(render_video(0, 60, (64, 96))[0], str(tmp_path / "long.mp4"))
    write_frames(render_video(1, 20, (64, 96))[0], str(tmp_path / "f"))
    d = FramePairDataset(
        [str(tmp_path / "long.mp4"), str(tmp_path / "f")],
        input_size=32,
        video_units=True,
        frame_units=True,
        max_unit_pairs=16,
        max_open_units=2,
    )
    import videomac.frames as frames_module

    decoded = []
    real = frames_module.video_frame_rgb
    monkeypatch.setattr(frames_module, "video_frame_rgb", lambda f, hw: decoded.append(f.pts) or real(f, hw))
    jpegs = []  # the bytes of each JPEG decode
    real_decode = ImageFile.decode
    monkeypatch.setattr(ImageFile, "decode", lambda im, f=1: jpegs.append(im.data) or real_decode(im, f))
    units = d.unit_ranges()
    assert [hi - lo for lo, hi in units] == [14, 15, 15, 15] + [9, 10]  # <= 16 pairs, split evenly
    for lo, hi in units:
        for i in range(lo, hi):
            d[i]
            assert len(d.ctx.open_units) <= 2 and all(len(c.frames) <= 2 for c in d.ctx.open_units.values())
    assert len(decoded) == 60 + 3  # every frame once (+ the gap frame at each of 3 inner unit ends)
    # 19 pairs: one decode each (frame t + 1), plus frame 0 of each unit and re-decodes at another DCT scale
    assert len(set(jpegs)) == 20 and len(jpegs) <= 19 + 2 + 3
    assert not d.ctx.open_units  # finished units are closed


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_units_draw_crops_at_request_like_direct_access(tmp_path, ext):
    # JPEGs at 192 x 256 with 48 px outputs: crops decode at DCT scales 1, 1/2 and 1/4, changing pair to pair
    write_frames(render_video(2, 12, (192, 256))[0], str(tmp_path / "v"), ext=ext)
    a = FramePairDataset(str(tmp_path), input_size=48)
    b = FramePairDataset(str(tmp_path), input_size=48, video_units=True, frame_units=True)
    factors = set()
    for i in range(len(a)):  # same seed, same pair: the same crop, flip and pixels, whatever was decoded before
        torch.manual_seed(i)
        x = a[i]
        torch.manual_seed(i)
        y = b[i]
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
        factors |= {entry[0] for c in b.ctx.open_units.values() for entry in c.frames.values()}
    assert ext == "png" or len(factors) > 1


# -------------------------------------------------------------------------------------- epoch order
class _Units:
    def __init__(self, units):
        self.units = units

    def __len__(self):
        return self.units[-1][1]

    def unit_ranges(self):
        return self.units


def test_epoch_indices_grouped_order():
    units = [(0, 40), (40, 47), (47, 90), (90, 91), (91, 130), (130, 200)]
    ds = _Units(units)
    for world, workers, B in [(1, 1, 8), (1, 3, 8), (2, 2, 5), (3, 4, 7)]:
        shares = [epoch_indices(ds, 2, 7, world, r, B, workers, interleave=4) for r in range(world)]
        assert all(len(s) == math.ceil(200 / world) for s in shares)
        assert sorted(set(i for s in shares for i in s)) == list(range(200))  # every pair, padding repeats
        assert shares == [epoch_indices(ds, 2, 7, world, r, B, workers, interleave=4) for r in range(world)]
        assert shares != [epoch_indices(ds, 3, 7, world, r, B, workers, interleave=4) for r in range(world)]
        for s in shares:
            full = len(s) // B
            for w in range(workers):  # what worker w loads: each unit's pairs in ascending order
                mine = [i for k in range(w, full, workers) for i in s[k * B : (k + 1) * B]]
                for lo, hi in units:
                    seq = [i for i in mine if lo <= i < hi]
                    assert seq == sorted(seq)
    one = epoch_indices(ds, 0, 0, 1, 0, 32, 1, interleave=8)
    per_batch = [
        len({next(u for u, (lo, hi) in enumerate(units) if lo <= i < hi) for i in one[k : k + 32]})
        for k in range(0, 192, 32)
    ]
    assert np.mean(per_batch) >= 3  # batches mix several units


def test_epoch_indices_plain_permutation_without_units():
    class Plain:
        def __len__(self):
            return 10

    g = torch.Generator().manual_seed(5 * 100003 + 1)
    perm = torch.randperm(10, generator=g).tolist()
    perm += perm[:2]
    assert epoch_indices(Plain(), 1, 5, 3, 1, 4, 2) == perm[1::3]  # the training loop's historic order
    assert epoch_indices(_Units([(i, i + 1) for i in range(10)]), 1, 5, 3, 1, 4, 2) == perm[1::3]


# ------------------------------------------------------------------------------------- loader, device
@pytest.mark.parametrize("kind", ["frames", "video"])
def test_loader_workers_every_pair_uint8(tmp_path, kind):
    for v in range(3):
        frames = render_video(v, 9, (64, 96))[0]
        if kind == "frames":
            write_frames(frames, str(tmp_path / f"v{v}"))
        else:
            write_video(frames, str(tmp_path / f"v{v}.mp4"))
    ds = FramePairDataset(str(tmp_path), input_size=32, scale=(1, 1), ratio=(1.5, 1.5), hflip=0, max_unit_pairs=4)
    sampler = EpochSampler()
    loader = make_loader(ds, sampler, 4, num_workers=2, seed=0, device=torch.device("cpu"))
    assert (
        ds.options.video_units and loader.prefetch_factor == 4 and loader.persistent_workers and not loader.pin_memory
    )
    sampler.indices = epoch_indices(ds, 0, 0, 1, 0, 4, loader.num_workers)
    assert sorted(sampler.indices) == list(range(24))
    seen = []
    for batch in loader:
        f1, f2 = batch
        assert f1.dtype == torch.uint8 and f1.shape == (4, 3, 32, 32)
        n1, n2 = batch_to_device(batch, "cpu")
        assert n1.dtype == torch.float32 and torch.allclose(n1, normalize_frames(f1))
        seen.append(f1)
    assert len(seen) == 6
    direct = torch.stack([ds[i][0] for i in sampler.indices])  # full-frame crops: no randomness left
    assert torch.equal(torch.cat(seen), direct)
    assert default_num_workers(1) >= 1


def test_normalize_frames_is_imagenet():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    y = normalize_frames(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(y[0, :, 0, 0], (torch.tensor([0, 128, 255]) / 255 - mean) / std)
    assert normalize_frames(y) is not None and normalize_frames(y).dtype == torch.float32


def _encoded_dataset(tmp_path, size=(96, 128)):
    write_frames(render_video(4, 5, size)[0], str(tmp_path / "v"))
    write_frames(render_video(5, 3, size)[0], str(tmp_path / "p"), ext="png")  # not JPEG: decoded on CPU
    return FramePairDataset(str(tmp_path), input_size=48, gpu_decode=True), FramePairDataset(
        str(tmp_path), input_size=48
    )


def test_gpu_decode_option_cpu_fallback(tmp_path):
    pytest.importorskip("torchvision")
    enc, plain = _encoded_dataset(tmp_path)
    items, refs = [], []
    for i in range(len(enc)):
        torch.manual_seed(i)
        items.append(enc[i])
        torch.manual_seed(i)
        refs.append(plain[i])
    assert sum(type(x).__name__ == "EncodedPair" for x in items) == 4  # the JPEG pairs; PNG pairs decoded
    batch = collate_pairs(items)
    assert isinstance(batch, PairBatch) and len(batch) == len(items)
    f1, f2 = batch_to_device(batch.pin_memory() if torch.cuda.is_available() else batch, "cpu")
    r1 = normalize_frames(torch.stack([r[0] for r in refs]))
    r2 = normalize_frames(torch.stack([r[1] for r in refs]))
    # decode_jpeg + antialiased bicubic in torch vs PIL draft + bicubic: a few levels at most on average
    assert (f1 - r1).abs().mean() * 0.226 * 255 < 3 and (f2 - r2).abs().mean() * 0.226 * 255 < 3
    full = [(x, r) for x, r in zip(items, refs) if type(x).__name__ != "EncodedPair"]
    assert full  # pairs not encoded come through unchanged
    data = [x.jpeg1 for x in items if type(x).__name__ == "EncodedPair"]
    crops = [x.crop for x in items if type(x).__name__ == "EncodedPair"]
    out = decode_jpeg_crops(data, crops, [False] * len(data), (48, 48), "cpu")
    assert out.dtype == torch.uint8 and out.shape == (len(data), 3, 48, 48)


@pytest.mark.cuda
def test_gpu_decode_on_cuda(tmp_path):
    pytest.importorskip("torchvision")
    enc, _ = _encoded_dataset(tmp_path)
    batch = collate_pairs([enc[i] for i in range(len(enc))])
    g1, g2 = batch_to_device(batch.pin_memory(), "cuda")
    c1, c2 = batch_to_device(batch, "cpu")
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg's: a fraction of a level on average
    diff = (g1.cpu() - c1).abs() * 0.226 * 255
    print(f"nvJPEG vs CPU: mean {diff.mean():.3f}, p99 {diff.flatten().quantile(0.99):.2f}, max {diff.max():.1f}")
    assert g1.is_cuda and diff.mean() < 1.5


@pytest.mark.slow
def test_bench_data_command(tmp_path, capsys):
    pytest.importorskip("torchvision")  # the authors' reference row
    import json

    from videomac.cli import main

    write_frames(render_video(0, 6, (64, 96))[0], str(tmp_path / "frames" / "v"))
    write_video(render_video(1, 8, (64, 96))[0], str(tmp_path / "videos" / "a.mp4"))
    argv = [
        "bench",
        "data",
        "--data",
        str(tmp_path / "frames"),
        "--data",
        str(tmp_path / "videos"),
        "--workers",
        "1",
        "--pairs",
        "8",
        "--batch-size",
        "4",
        "--input-size",
        "32",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])  # the last line is JSON
    assert {"pairs_per_s", "peak_rss_mb", "workers"} <= result.keys() and result["workers"] == 1
    assert [r["loader"] for r in result["rows"]] == ["videomac", "videomac units", "authors", "videomac"]
    assert all(r["vs_authors"] > 0 for r in result["rows"])
    assert all(r["pairs_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in result["rows"])
    assert any(line.startswith("loader") for line in out)  # the table
