import pytest
import torch

from videomac.masking import (
    check_images,
    check_mask,
    grid_size,
    mask_to_image,
    num_visible,
    patchify,
    random_mask,
    unpatchify,
    upsample_mask,
)


@pytest.mark.parametrize("grid,ratio", [((7, 7), 0.75), ((2, 3), 0.5), ((4, 4), 0.0), ((3, 5), 0.9)])
def test_random_mask_keeps_exact_count(grid, ratio):
    mask = random_mask(6, grid, ratio)
    assert mask.dtype == torch.bool and mask.shape == (6, *grid)
    keep = int(grid[0] * grid[1] * (1 - ratio))
    assert keep == num_visible(grid[0] * grid[1], ratio)
    assert ((~mask).flatten(1).sum(1) == keep).all()


def test_random_mask_differs_per_sample_and_follows_generator():
    a = random_mask(8, (7, 7), 0.75, generator=torch.Generator().manual_seed(0))
    b = random_mask(8, (7, 7), 0.75, generator=torch.Generator().manual_seed(0))
    c = random_mask(8, (7, 7), 0.75, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(m.flatten().tolist()) for m in a}) > 1


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_random_mask_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_mask(2, (7, 7), ratio)


@pytest.mark.parametrize("hw", [(64, 96), (32, 32), (224, 224), (96, 64)])
def test_patchify_roundtrip(hw):
    x = torch.randn(2, 3, *hw)
    p = patchify(x)
    assert p.shape == (2, (hw[0] // 32) * (hw[1] // 32), 32 * 32 * 3)
    assert torch.equal(unpatchify(p, grid_size(hw)), x)


def test_patchify_row_is_one_patch():
    x = torch.randn(1, 3, 64, 96)
    p = patchify(x)
    # patch (row 1, col 2) is grid index 1*3+2 = 5; its values in (row, col, channel) order
    ref = x[0, :, 32:64, 64:96].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[0, 5], ref)


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 32"):
        patchify(torch.randn(1, 3, 60, 96))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        check_images(torch.randn(1, 3, 64, 100))


def test_check_images_and_mask_errors():
    with pytest.raises(ValueError, match="3 channels"):
        check_images(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        check_images(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(2, 2, 3\)"):
        check_mask(torch.zeros(2, 3, 2, dtype=torch.bool), 2, (2, 3))
    assert check_mask(torch.zeros(2, 2, 3, dtype=torch.uint8), 2, (2, 3)).dtype == torch.bool
    with pytest.raises(TypeError, match="bool"):  # a float mask is refused, not cast
        check_mask(torch.zeros(2, 2, 3), 2, (2, 3))


def test_upsample_mask_nearest_blocks():
    m = torch.tensor([[[True, False], [False, True]]])
    up = upsample_mask(m, (4, 6))
    assert up.shape == (1, 4, 6)
    assert up[0, :2, :3].all() and not up[0, :2, 3:].any() and up[0, 2:, 3:].all()
    assert mask_to_image(m, (64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="not a multiple"):
        upsample_mask(m, (5, 4))
