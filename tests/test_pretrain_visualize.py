"""The reconstruction figure: layout, and exact reconstructions from perfect predictions."""

import numpy as np
import pytest
import torch
from PIL import Image

from videomac.masking import patchify, random_mask
from videomac.pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from videomac.pretrain.visualize import (
    _HEADER,
    _PAD,
    reconstruction_figure,
    reconstruction_panels,
    save_reconstruction_figure,
)
from videomac.synthetic import render_video

P = 16


def _batch(b=3, size=(64, 96)):
    frames = render_video(5, b + 1, size, num_objects=2)[0]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mask = random_mask(b, (size[0] // P, size[1] // P), 0.75, generator=torch.Generator().manual_seed(0))
    return x[:-1], x[1:], mask, frames


def _perfect(frames, norm_pix):
    t = patchify(frames, P)
    if not norm_pix:
        return t
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5


@pytest.mark.parametrize("norm_pix", [True, False])
def test_perfect_predictions_reconstruct_frames(norm_pix):
    f1, f2, mask, raw = _batch()
    panels = reconstruction_panels(
        f1, f2, mask, _perfect(f1, norm_pix), _perfect(f2, norm_pix), patch_size=P, norm_pix_loss=norm_pix
    )
    assert panels.shape == (3, 5, 64, 96, 3) and panels.dtype == np.uint8
    a, b = raw[:-1].astype(int), raw[1:].astype(int)
    assert np.abs(panels[:, 0].astype(int) - a).max() <= 1  # frame 1
    assert np.abs(panels[:, 1].astype(int) - b).max() <= 1  # frame 2
    assert np.abs(panels[:, 3].astype(int) - a).max() <= 1  # online reconstruction == frame 1
    assert np.abs(panels[:, 4].astype(int) - b).max() <= 1  # target reconstruction == frame 2

    m = mask.repeat_interleave(P, 1).repeat_interleave(P, 2).numpy()
    assert (panels[:, 2][m] == 128).all()  # masked input is grey where masked ...
    assert np.abs(panels[:, 2][~m].astype(int) - a[~m]).max() <= 1  # ... and frame 1 elsewhere


def test_wrong_predictions_show_only_in_masked_patches():
    f1, f2, mask, raw = _batch(b=2)
    zeros = torch.zeros(2, mask[0].numel(), P * P * 3)
    panels = reconstruction_panels(f1, f2, mask, zeros, zeros, patch_size=P)
    m = mask.repeat_interleave(P, 1).repeat_interleave(P, 2).numpy()
    online = panels[:, 3].astype(int)
    assert np.abs(online[~m] - raw[:-1].astype(int)[~m]).max() <= 1
    assert np.abs(online[m] - raw[:-1].astype(int)[m]).mean() > 5


def test_figure_size_rows_and_save(tmp_path):
    f1, f2, mask, _ = _batch(b=3)
    pred = torch.randn(3, mask[0].numel(), P * P * 3)
    fig = reconstruction_figure(f1, f2, mask, pred, pred, patch_size=P, max_rows=2)
    assert isinstance(fig, Image.Image) and fig.mode == "RGB"
    assert fig.size == (_PAD + 5 * (96 + _PAD), _HEADER + _PAD + 2 * (64 + _PAD) + _HEADER)
    panels = reconstruction_panels(f1, f2, mask, pred, pred, patch_size=P, max_rows=2)
    r, c = 1, 3
    x0, y0 = _PAD + c * (96 + _PAD), _HEADER + _PAD + r * (64 + _PAD)
    assert np.array_equal(np.asarray(fig)[y0 : y0 + 64, x0 : x0 + 96], panels[r, c])
    header = np.asarray(fig)[:_HEADER]
    assert (header < 128).any()  # titles were drawn
    caption = np.asarray(fig)[-_HEADER:]
    assert (caption < 128).any()  # the norm-pix caption says how predictions are shown

    path = tmp_path / "figs" / "recon.png"
    save_reconstruction_figure(str(path), f1, f2, mask, pred, pred, patch_size=P)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (fig.size[0], _HEADER + _PAD + 3 * (64 + _PAD) + _HEADER)


def test_shape_errors():
    f1, f2, mask, _ = _batch(b=2)
    good = torch.zeros(2, mask[0].numel(), P * P * 3)
    with pytest.raises(ValueError, match="pred_online"):
        reconstruction_figure(f1, f2, mask, good[:, :-1], good, patch_size=P)
    with pytest.raises(ValueError, match="mask"):
        reconstruction_figure(f1, f2, mask[:, :-1], good, good, patch_size=P)
