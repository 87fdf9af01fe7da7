"""The isotropic ConvNeXt-V2 of the paper's Table 2 (patch 16): the authors' architecture and parameter
count, sparse execution on the 16x16 grid (both backends), and one VideoMAC pretraining step."""

import copy

import pytest
import timm
import torch
from authors_ref import authors_convnext_forward, make_authors_convnext_state

import videomac
from videomac.masking import check_images, patchify, random_mask, unpatchify, upsample_mask
from videomac.pretrain.model import VideoMAC

NAME = "videomac_cnxv2_iso_s"


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    model = timm.create_model(NAME).eval()
    with torch.no_grad():  # non-trivial GRN and norm parameters (timm initialises them to 0 / 1)
        for n, p in model.named_parameters():
            if "grn" in n or n.startswith("norm.") or n.endswith("norm.weight"):
                p.normal_(0.5, 0.2)
    return model


def test_parameter_count_is_the_authors():
    with torch.device("meta"):
        m = timm.create_model(NAME)
    # SparseConvNeXtV2_Isotropic(dims=384, depths=18) of their convnextv2_sparse.py: 21,979,008 (paper: 22M)
    assert sum(p.numel() for p in m.parameters()) == 21_979_008
    assert m.feature_info[-1]["reduction"] == 16


def test_same_function_as_the_authors_encoder():
    ck = make_authors_convnext_state(2, 18, 384, isotropic=True, seed=3)
    from videomac.convert import convert_official

    sd, filled = convert_official(ck, NAME)
    assert filled == []
    m = timm.create_model(NAME).eval()
    m.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = authors_convnext_forward(ck, x, 2, 18, 384, isotropic=True)
        out = m.forward_features(x)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


def test_masking_with_patch_16():
    x = torch.randn(2, 3, 64, 96)
    assert check_images(x, 16) == (4, 6)
    p = patchify(x, 16)
    assert p.shape == (2, 24, 16 * 16 * 3)
    torch.testing.assert_close(unpatchify(p, (4, 6), 16), x)
    mask = random_mask(2, (4, 6), 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 4, 6) and (~mask).sum(dim=(1, 2)).tolist() == [6, 6]
    assert upsample_mask(mask, (64, 96)).shape == (2, 64, 96)


@pytest.mark.parametrize("backend", ["masked", "visible"])
def test_unmasked_sparse_equals_dense(dense, backend):
    enc = videomac.SparseEncoder(copy.deepcopy(dense), backend=backend)
    assert enc.patch_size == 16 and enc.num_features == 384
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = enc(x, torch.zeros(2, 4, 6, dtype=torch.bool))
        ref = dense.forward_features(x)
    assert (out - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        enc(torch.randn(1, 3, 56, 64), torch.zeros(1, 3, 4, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["masked", "visible"])
def test_masked_pixels_do_not_leak(dense, backend):
    enc = videomac.SparseEncoder(copy.deepcopy(dense), backend=backend)
    mask = random_mask(2, (4, 6), 0.5, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 64, 96)
    x2 = torch.where(upsample_mask(mask, (64, 96)).unsqueeze(1), torch.randn_like(x) * 5, x)
    with torch.no_grad():
        a, b = enc(x, mask), enc(x2, mask)
    visible = ~mask.unsqueeze(1)
    assert ((a - b).abs() * visible).max() < 1e-5
    assert (a * ~visible).abs().max() == 0 and (a * visible).abs().max() > 0


def test_visible_equals_masked(dense):
    a = videomac.SparseEncoder(copy.deepcopy(dense).train(), backend="masked")
    b = videomac.SparseEncoder(copy.deepcopy(dense).train(), backend="visible")
    mask = random_mask(2, (4, 6), 0.75, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 64, 96)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa, mask), b(xb, mask)
    assert (ya - yb).abs().max() < 2e-5
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3))
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert (xa.grad - xb.grad).abs().max() < 1e-4
    diffs = [(p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters()) if p.grad is not None]
    assert diffs and max(diffs) < 1e-4
    # back to the dense timm model, strictly
    timm.create_model(NAME).load_state_dict(b.to_dense().state_dict(), strict=True)


def test_one_pretraining_step():
    torch.manual_seed(0)
    model = VideoMAC(NAME, decoder_dim=64)
    assert model.patch_size == 16
    assert model.online.decoder.pred.out_channels == 16 * 16 * 3
    f1, f2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    out = model(f1, f2)
    assert out["mask"].shape == (2, 4, 4) and out["pred_online"].shape == (2, 16, 768)
    assert (~out["mask"]).sum(dim=(1, 2)).tolist() == [4, 4]
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    enc = model.online.encoder.model
    grads = [p.grad for n, p in enc.named_parameters() if not n.startswith("head.")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert enc.stem.weight.grad.abs().sum() > 0 and enc.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    model.update_target(0.996)
    exported = model.export_encoder()
    assert type(exported).__name__ == "VideoMACConvNeXtIsotropic"
    assert exported.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 384, 4, 4)
