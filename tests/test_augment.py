"""On-device batch augmentation: shapes, identity at strength 0, determinism, black background, dihedral coverage."""
import numpy as np
import pytest
import torch

from leukmodels.augment import STAIN_MEAN, STAIN_STD, _dihedral, augment, normalise


def _cells(n=8, size=32, seed=0):
    """uint8 N x 3 x S x S: an off-centre violet blob (asymmetric, so every flip/rotation shows) on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 3, size, size), np.uint8)
    for i in range(n):
        blob = (yy - size * 0.4) ** 2 + (xx - size * 0.6) ** 2 < (size * rng.uniform(0.2, 0.3)) ** 2
        out[i][:, blob] = np.clip(np.array([70, 30, 80])[:, None] + rng.normal(0, 10, (3, blob.sum())), 0, 255)
    return torch.from_numpy(out)


def test_shape_dtype_device_kept_and_input_untouched():
    batch = _cells()
    before = batch.clone()
    out = augment(batch, 0.8, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.float32 and out.device == batch.device
    assert torch.isfinite(out).all()
    assert torch.equal(batch, before)


def test_strength_zero_is_exactly_normalisation():
    batch = _cells()
    out = augment(batch, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, normalise(batch))
    # normalise: (x / 255 - mean) / std per channel
    x = batch[0, :, 16, 19].float() / 255
    expected = (x - torch.tensor(STAIN_MEAN)) / torch.tensor(STAIN_STD)
    torch.testing.assert_close(out[0, :, 16, 19], expected)


def test_deterministic_by_generator():
    batch = _cells()
    a = augment(batch, 0.7, torch.Generator().manual_seed(123))
    b = augment(batch, 0.7, torch.Generator().manual_seed(123))
    c = augment(batch, 0.7, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, normalise(batch))  # it does change images at strength > 0


def test_black_background_stays_black():
    black = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    out = augment(black, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalise(black))
    # the corners of a rotated cell image are black fill, not a wrap-around or an edge copy
    rotated = augment(_cells(n=16), 1.0, torch.Generator().manual_seed(1))
    background = normalise(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).view(3)
    torch.testing.assert_close(rotated[:, :, 0, 0], background.expand(16, 3))


def test_colour_and_cell_area_change_moderately():
    batch = _cells(n=32)
    out = augment(batch, 1.0, torch.Generator().manual_seed(0))
    mean, std = torch.tensor(STAIN_MEAN).view(1, 3, 1, 1), torch.tensor(STAIN_STD).view(1, 3, 1, 1)
    pixels = out * std + mean  # back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    # cell = pixels above a mid level (bilinear resampling blurs the edge, so not the faintest level)
    area_in = (batch.amax(1) > 25).float().sum((1, 2))
    area_out = (pixels.amax(1) > 25 / 255).float().sum((1, 2))
    ratio = area_out / area_in  # rotations move the cell, they do not resize it (edges blur a little at 32 px)
    assert 0.9 < ratio.median() < 1.1 and ((ratio - 1).abs() < 0.25).all()


def test_dihedral_part_reaches_all_eight_symmetries():
    x = torch.arange(9.0).view(1, 1, 3, 3).expand(256, 1, 3, 3)
    u = torch.rand(256, 3, generator=torch.Generator().manual_seed(0))
    out = _dihedral(x, u, p=0.5)
    assert len({tuple(v.flatten().tolist()) for v in out}) == 8
    assert torch.equal(_dihedral(x, u, p=0.0), x)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)])
def test_bad_batches_raise(bad):
    with pytest.raises(ValueError, match="uint8 N x 3"):
        augment(bad, 0.5)


def test_bad_strength_raises():
    with pytest.raises(ValueError, match="strength"):
        augment(_cells(n=1), 1.5)


def test_hue_shift_is_a_rotation_that_keeps_grey():
    from leukmodels.augment import _hue_matrices

    m = _hue_matrices(torch.tensor([0.3, -0.2, 0.0]))  # 3 x 3 x 3
    torch.testing.assert_close(m @ torch.ones(3), torch.ones(3, 3))  # grey pixels stay grey
    torch.testing.assert_close(m @ m.transpose(1, 2), torch.eye(3).expand(3, 3, 3))  # orthogonal
    torch.testing.assert_close(m[2], torch.eye(3))
