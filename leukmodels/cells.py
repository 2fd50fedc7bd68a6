"""One generated C-NMC-like cell: a 450 x 450 24-bit frame holding one violet cell on black (the segmented cells of
C-NMC 2019; Gupta & Gupta, ALL Challenge dataset of ISBI 2019, TCIA, https://doi.org/10.7937/tcia.2019.dc64i46r).

What the cells imitate was measured here on 82 real C-NMC training cells: foreground mean RGB about (70, 30, 80),
varying by about 8 per channel from cell to cell and about 10 within a cell (mottled chromatin); a nucleus filling
most of the cell inside a thin paler rim; round to irregular contours with occasional notches and small blebs;
foreground area about 37,000 px for ALL and 31,000 px for HEM, spread about 7,000-9,000 px (the published means
over the whole training set are 36,244 and 26,544 px; the class anchors here follow those published means, which
make size a visible signal even at 32 px, as it is on real cells). The class signal is shared by size,
nucleus:cytoplasm ratio and chromatin grain; a cell sits between the classes by its patient's `blastness` (HEM
about 0, ALL about 1, then pulled toward the other class by the patient's difficulty), or by the mirror of it for
a patient's flipped cells (leukmodels.synthetic).
"""
from __future__ import annotations

import numpy as np

FRAME = 450  # C-NMC frames are 450 x 450
# Class anchors (HEM = blastness 0, ALL = blastness 1); a cell interpolates between them by its patient's blastness.
AREA = (26_500.0, 36_200.0)  # px, the published means over the whole training set (the 82 measured: 31k / 37k)
AREA_CELL_SD, AREA_PATIENT_SD = 5_500.0, 5_000.0  # together about the measured 7,000-9,000 px spread
NC_RATIO = (0.845, 0.895)  # nucleus radius / cell radius: blasts have less cytoplasm
CHROMATIN_SIGMA = (2.3, 1.7)  # px, Gaussian scale of the chromatin grain: blasts finer
CHROMATIN_AMP = (6.0, 5.4)  # grey levels: normal cells more clumped
NUCLEUS_RGB = np.array([66.0, 26.0, 78.0], np.float32)  # with the rim: foreground mean about (70, 30, 80)
CYTOPLASM_RGB = np.array([82.0, 42.0, 90.0], np.float32)
STAIN_DIR = np.array([1.0, 0.8, 0.9], np.float32)  # texture moves a pixel along paler <-> darker stain


def _lerp(pair, t):
    return pair[0] + t * (pair[1] - pair[0])


_FREQ2: dict[int, np.ndarray] = {}


def _smooth_noise(rng: np.random.Generator, side: int, sigmas: tuple[float, ...]) -> list[np.ndarray]:
    """Gaussian-filtered white noise (via FFT), one side x side unit-variance field per sigma, one white field."""
    if side not in _FREQ2:                            # side x (side//2+1): squared spatial frequency
        fy, fx = np.fft.fftfreq(side), np.fft.rfftfreq(side)
        _FREQ2[side] = (fy[:, None] ** 2 + fx[None, :] ** 2).astype(np.float32)
    spectrum = np.fft.rfft2(rng.standard_normal((side, side), dtype=np.float32))
    fields = []
    for s in sigmas:
        field = np.fft.irfft2(spectrum * np.exp(-2 * np.pi ** 2 * s * s * _FREQ2[side]), s=(side, side))
        fields.append((field * np.sqrt(4 * np.pi) * s).astype(np.float32))   # filtered variance is 1/(4 pi s^2)
    return fields


def _radial_profile(rng: np.random.Generator, n: int = 2048) -> np.ndarray:
    """Relative radius r(theta)/R on n angles: Fourier perturbation, sometimes a notch or small blebs."""
    theta = np.linspace(-np.pi, np.pi, n, endpoint=False)
    irregularity = rng.uniform(0.02, 0.11)             # round ... irregular
    k = np.arange(2, 9)[:, None]
    amps = rng.normal(0.0, irregularity / k[:, 0] ** 1.3)[:, None]
    f = 1.0 + (amps * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
    wrap = lambda a: (theta - a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731  angular distance
    bump = lambda height, width: height * np.exp(-wrap(rng.uniform(-np.pi, np.pi)) ** 2 / (2 * width ** 2))  # noqa
    if rng.random() < 0.2:                              # notch
        f -= bump(rng.uniform(0.08, 0.22), rng.uniform(0.06, 0.16))
    for _ in range(rng.integers(1, 4) if rng.random() < 0.25 else 0):   # small blebs
        f += bump(rng.uniform(0.04, 0.09), rng.uniform(0.05, 0.10))
    return np.clip(f, 0.6, 1.35)


def render_cell(rng: np.random.Generator, blastness: float, patient: dict) -> np.ndarray:
    """One 450 x 450 x 3 uint8 frame: a cell whose class features sit at `blastness` (0 = HEM, 1 = ALL)."""
    area = _lerp(AREA, blastness) + patient["area_offset"] + rng.normal(0, AREA_CELL_SD)
    area = float(np.clip(area, 12_000, 70_000))
    profile = _radial_profile(rng)
    radius = np.sqrt(2 * area / (np.mean(profile ** 2) * 2 * np.pi))     # polar area = 1/2 * integral r^2 dtheta
    radius = min(radius, (FRAME / 2 - 14) / profile.max())               # keep the whole cell inside the frame
    cy, cx = FRAME / 2 + rng.uniform(-12, 12, 2)
    # work in a square window around the cell (side a multiple of 32 for the FFT), not the whole frame
    side = min(FRAME, int(np.ceil((2 * radius * profile.max() + 6) / 32)) * 32)
    y0, x0 = (int(np.clip(round(c) - side // 2, 0, FRAME - side)) for c in (cy, cx))
    yy, xx = np.mgrid[y0:y0 + side, x0:x0 + side].astype(np.float32)
    dy, dx = yy - cy, xx - cx                                            # side x side, from the cell centre
    theta = np.arctan2(dy, dx)
    rho = np.hypot(dy, dx)
    bins = ((theta + np.pi) * (len(profile) / (2 * np.pi))).astype(np.int32) % len(profile)
    boundary = radius * profile[bins]                                   # cell radius along each pixel's ray
    cell = rho <= boundary
    nc = _lerp(NC_RATIO, blastness) + rng.normal(0, 0.025)
    ecc, ecc_dir = rng.uniform(0, 0.05), rng.uniform(-np.pi, np.pi)     # nucleus off-centre: rim thinner on one side
    nucleus = rho <= boundary * np.minimum(nc + ecc * np.cos(theta - ecc_dir), 0.97)

    # chromatin grain: class sets scale and contrast, the patient's focus and staining blur both, the cell jitters
    grain_sigma = max(0.8, _lerp(CHROMATIN_SIGMA, blastness) * patient["focus"] + rng.normal(0, 0.25))
    grain, mottle = _smooth_noise(rng, side, (grain_sigma, 7.0))
    grain_amp = max(2.0, _lerp(CHROMATIN_AMP, blastness) * patient["contrast"] + rng.normal(0, 0.7))
    texture = np.where(nucleus, grain_amp * grain, 0.4 * grain_amp * grain) + 4.0 * mottle      # side x side
    base = np.where(nucleus[..., None], NUCLEUS_RGB, CYTOPLASM_RGB)                            # side x side x 3
    rgb = base + rng.normal(0, 5.5, 3).astype(np.float32) + texture[..., None] * STAIN_DIR
    # patient stain and illumination: per-channel gain and offset, brightness, a gentle gradient across the cell
    light = patient["brightness"] * (1 + (patient["gradient"][0] * dy + patient["gradient"][1] * dx) / FRAME)
    rgb = rgb * patient["gain"] * light[..., None] + patient["offset"]
    rgb += 2.5 * rng.standard_normal(rgb.shape, dtype=np.float32)                             # sensor noise
    window = np.clip(rgb, 6, 255).astype(np.uint8)                       # foreground never pure black
    window[~cell] = 0                                                     # segmented cell on black
    frame = np.zeros((FRAME, FRAME, 3), np.uint8)
    frame[y0:y0 + side, x0:x0 + side] = window
    return frame


def patient_style(rng: np.random.Generator, is_all: bool) -> dict:
    """A patient's class position (`blastness`), cell size offset, stain, illumination, focus and contrast: what a
    model can memorise about a patient, so patient-level splits matter here as on the real data. The shifts are
    sized so the mean cell colour still varies about 8 per channel across cells (the measured spread)."""
    return {
        # wide enough that some patients sit near the other class: a weaker signal, patient by patient
        "blastness": float(rng.normal(1.0, 0.45) if is_all else rng.normal(0.0, 0.4)),
        "area_offset": float(rng.normal(0, AREA_PATIENT_SD)),
        "gain": rng.normal(1.0, 0.06, 3).astype(np.float32),
        "offset": rng.normal(0.0, 4.5, 3).astype(np.float32),
        "brightness": float(rng.normal(1.0, 0.06)),
        "gradient": rng.normal(0.0, 0.12, 2).astype(np.float32),
        "focus": float(np.clip(rng.normal(1.0, 0.12), 0.7, 1.4)),      # scales the chromatin grain size
        "contrast": float(np.clip(rng.normal(1.0, 0.1), 0.7, 1.3)),    # scales the chromatin contrast
    }


def flip_share(rng: np.random.Generator, mean: float) -> float:
    """A patient's difficulty: the share of its cells drawn at the other class's position (`1 - blastness`), or the
    share of the way its class position is pulled toward the other class, from Beta(0.5, b) with the given mean. Most patients get almost none, a few most of theirs: per-patient accuracy on
    real C-NMC ranges from 0.26 to 1.0 (Gupta et al. 2020, C-NMC challenge overview, see leukmodels.synthetic)."""
    if mean <= 0:
        return 0.0
    return float(rng.beta(0.5, 0.5 * (1 - mean) / mean))


__all__ = ["FRAME", "flip_share", "patient_style", "render_cell"]
