"""Small learnable stand-ins for decoded C-NMC sets, and a tiny training config: for the tests of fit."""
import numpy as np

from leukmodels.config import TrainConfig
from leukmodels.data import DecodedSet


def cell_set(n_all, n_hem, per_patient, size=32, seed=0, first_patient=0):
    """A small learnable stand-in for decoded C-NMC cells: one violet blob on black per image.

    ALL cells are larger (radius ~0.30 S vs ~0.24 S) with finer texture; each patient has its own stain gain,
    size offset and position bias, so patients differ as on the real data and held-out patients test generalisation.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images, labels, patients = [], [], []
    for k in range(n_all + n_hem):
        is_all = k < n_all
        name = f"{first_patient + k}" if is_all else f"H{first_patient + k}"
        gain = rng.uniform(0.85, 1.15, 3)
        radius_mean = (0.30 if is_all else 0.24) * size + rng.normal(0, 0.01 * size)
        centre = size / 2 + rng.normal(0, 1.0, 2)
        for _ in range(per_patient):
            r = radius_mean + rng.normal(0, 0.015 * size)
            cy, cx = centre + rng.normal(0, 1.0, 2)
            angle = np.arctan2(yy - cy, xx - cx)
            edge = r * (1 + 0.08 * np.sin(3 * angle + rng.uniform(0, 6.3)))  # irregular contour
            cell = (yy - cy) ** 2 + (xx - cx) ** 2 < edge ** 2
            grain = rng.normal(0, 6.0 if is_all else 14.0, (3, size // 2, size // 2))
            texture = grain.repeat(2, axis=1).repeat(2, axis=2)  # mottled: 2 x 2 px grain
            rgb = np.array([70.0, 30.0, 80.0])[:, None, None] * gain[:, None, None] + texture
            images.append(np.where(cell, np.clip(rgb, 0, 255), 0).astype(np.uint8))
            labels.append(int(is_all))
            patients.append(name)
    n = len(labels)
    return DecodedSet(np.stack(images), np.array(labels, np.int64), np.array(patients), np.array(
        [f"img{i}" for i in range(n)]), f"cells-{seed}")


def tiny_config(**changes):
    base = dict(family="baseline", filters=8, depth=2, image_size=32, epochs=3, batch_size=16, lr=3e-3,
                warmup_epochs=0.5, aug_strength=0.5, seed=0)
    return TrainConfig(**{**base, **changes})
