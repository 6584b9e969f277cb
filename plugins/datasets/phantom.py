"""The built-in ``phantom`` dataset: procedural ultrasound-like images with lesion masks.

Each image is rendered the way a scanner forms one: echogenicity and attenuation are built on a
(beam, depth) grid, the echo envelope is attenuated along each beam (so a lesion casts a posterior
shadow or enhancement), multiplied by correlated Rayleigh speckle, log-compressed, then
scan-converted into a sector (curvilinear probe) or a rectangle (linear probe) with a black
background. Tissue has a bright skin line, dark subcutaneous fat with hypo-echoic lobules (decoys),
bright heterogeneous gland and striated muscle. Lesions are hypo-echoic: benign ones smooth ovals
(wider than tall, often with posterior enhancement), malignant ones lobulated or spiculated with an
echogenic halo and posterior shadowing; ``normal`` images have no lesion. A global threshold fails
(background, fat, decoys and shadows are as dark as lesions) while shape, boundary and context
make the lesion learnable.

Everything is deterministic for a given seed: image ``i`` is drawn from ``default_rng([seed, i])``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from harness.api import DatasetSource, SegDataset
from harness.config.params import build_params
from harness.data.datasets import assemble_dataset, parse_spec_params
from harness.hookspecs import hookimpl

#: share of each stratum, in BUSI's proportions (437 / 210 / 133 of 780)
STRATA_SHARES = (("benign", 0.56), ("malignant", 0.27), ("normal", 0.17))


@dataclass
class PhantomParams:
    """Parameters of the phantom dataset (``--data phantom:count=50,size=64``)."""

    #: number of images generated
    count: int = 200
    #: height and width of the generated images in pixels
    size: int = 128
    #: seed of the generator: the same seed gives the same images
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 3:
            raise ValueError(f"count must be at least 3 (one image per stratum), got {self.count}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")


def strata_counts(count: int) -> list[tuple[str, int]]:
    """How many images of each stratum ``count`` images hold (at least one of each)."""
    counts = [max(1, round(share * count)) for _, share in STRATA_SHARES]
    counts[0] = count - sum(counts[1:])
    return [(name, n) for (name, _), n in zip(STRATA_SHARES, counts, strict=True)]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.clip(x, -60, 60)))


class _Probe:
    """Maps the (beam b in [-1, 1], depth d in [0, 1]) grid to normalised image coordinates."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.linear = bool(rng.random() < 0.4)
        if self.linear:
            self.centre = 0.5 + rng.uniform(-0.04, 0.04)
            self.half_width = rng.uniform(0.34, 0.5)
            self.top = rng.uniform(0.03, 0.12)
            self.depth = 1.0 - self.top
        else:
            self.apex_x = 0.5 + rng.uniform(-0.03, 0.03)
            self.apex_y = -rng.uniform(0.25, 0.6)
            self.half_angle = rng.uniform(0.45, 0.7)
            self.r0 = -self.apex_y + rng.uniform(0.03, 0.08)
            self.r1 = self.r0 + rng.uniform(0.9, 1.05)

    def to_image(self, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.linear:
            return self.centre + b * self.half_width, self.top + d * self.depth
        theta = b * self.half_angle
        rho = self.r0 + d * (self.r1 - self.r0)
        return self.apex_x + rho * np.sin(theta), self.apex_y + rho * np.cos(theta)

    def to_beam(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.linear:
            return (x - self.centre) / self.half_width, (y - self.top) / self.depth
        theta = np.arctan2(x - self.apex_x, y - self.apex_y)
        rho = np.hypot(x - self.apex_x, y - self.apex_y)
        return theta / self.half_angle, (rho - self.r0) / (self.r1 - self.r0)


@dataclass
class _Blob:
    """A star-shaped region in image coordinates: inside where ``scale(x, y) < 1``."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    harmonics: list[tuple[int, float, float]]

    def scale(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c, s = float(np.cos(self.angle)), float(np.sin(self.angle))
        u = ((x - self.cx) * c + (y - self.cy) * s) / self.a
        v = (-(x - self.cx) * s + (y - self.cy) * c) / self.b
        phi = np.arctan2(v, u)
        radius = np.ones_like(phi)
        for k, amp, phase in self.harmonics:
            radius += float(amp) * np.cos(k * phi + float(phase))
        return np.hypot(u, v) / radius


def _lesion(rng: np.random.Generator, probe: _Probe, kind: str) -> _Blob:
    b0, d0 = rng.uniform(-0.55, 0.55), rng.uniform(0.3, 0.62)
    cx, cy = probe.to_image(np.array(b0), np.array(d0))
    a = rng.uniform(0.08, 0.21)
    if kind == "benign":
        b = a * rng.uniform(0.5, 0.85)  # wider than tall
        angle = rng.uniform(-0.35, 0.35)
        harmonics = [(k, rng.uniform(0.0, 0.06), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        if rng.random() < 0.35:  # macrolobulated
            harmonics.append((int(rng.integers(3, 5)), rng.uniform(0.08, 0.14), rng.uniform(0, 2 * np.pi)))
    else:
        b = a * rng.uniform(0.75, 1.3)
        angle = rng.uniform(-np.pi / 2, np.pi / 2)
        harmonics = [(k, rng.uniform(0.04, 0.16), rng.uniform(0, 2 * np.pi)) for k in (3, 4, 5, 7)]
        harmonics += [(int(k), rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi)) for k in rng.integers(9, 19, 2)]
    return _Blob(float(cx), float(cy), a, b, angle, harmonics)


def render(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``size`` x ``size`` phantom image (uint8) and its lesion mask (bool) of stratum ``kind``."""
    probe = _Probe(rng)
    nb = nd = int(size * 1.25)
    axis_b, axis_d = np.linspace(-1, 1, nb, dtype=np.float32), np.linspace(0, 1, nd, dtype=np.float32)
    bb, dd = np.meshgrid(axis_b, axis_d, indexing="xy")  # rows = depth
    px, py = probe.to_image(bb, dd)

    # Layered tissue echogenicity, layers follow the skin line (wavy boundaries).

    def wave(base: float, amp: float) -> np.ndarray:
        return base + amp * np.sin(rng.uniform(1, 4) * np.pi * bb + rng.uniform(0, 6))

    fat_end = wave(rng.uniform(0.12, 0.3), rng.uniform(0.01, 0.05))
    gland_end = fat_end + wave(rng.uniform(0.3, 0.5), rng.uniform(0.02, 0.06))
    fat, gland, muscle = rng.uniform(0.28, 0.42), rng.uniform(0.6, 0.85), rng.uniform(0.4, 0.55)
    echo = np.where(dd < fat_end, fat, np.where(dd < gland_end, gland, muscle))
    striation = 1 + 0.25 * np.sin(dd * rng.uniform(60, 110) + 0.8 * _smooth_noise(rng, dd.shape, 6))
    echo = np.where(dd >= gland_end, echo * striation, echo)
    echo = echo * np.exp(rng.uniform(0.25, 0.4) * _smooth_noise(rng, dd.shape, size / 24))
    echo = np.where(dd < 0.025, 1.0, echo)  # skin line

    # Hypo-echoic fat lobules and ducts: dark, elongated along the skin, no posterior effect.
    for _ in range(int(rng.integers(2, 7))):
        bx, by = probe.to_image(np.array(rng.uniform(-0.9, 0.9)), np.array(rng.uniform(0.05, 0.75)))
        a = rng.uniform(0.05, 0.16)
        lobule = _Blob(float(bx), float(by), a, a / rng.uniform(2.0, 4.0), rng.uniform(-0.25, 0.25), [])
        inside = _logistic((1 - lobule.scale(px, py)) / rng.uniform(0.08, 0.2))
        echo = echo * (1 - rng.uniform(0.45, 0.75) * inside)

    attenuation = np.full(dd.shape, rng.uniform(1.2, 2.2))
    lesion = None
    if kind != "normal":
        lesion = _lesion(rng, probe, kind)
        s = lesion.scale(px, py)
        edge = rng.uniform(0.02, 0.05) if kind == "benign" else rng.uniform(0.04, 0.09)
        inside = _logistic((1 - s) / edge)
        contrast = rng.uniform(0.08, 0.25)
        internal = np.exp(0.35 * _smooth_noise(rng, dd.shape, size / 40))
        echo = echo * (1 - inside) + echo.mean() * contrast * internal * inside
        if kind == "malignant":  # echogenic halo
            echo = echo * (1 + rng.uniform(0.3, 0.8) * np.exp(-(((s - 1.12) / 0.1) ** 2)))
        elif rng.random() < 0.5:  # thin capsule
            echo = echo * (1 + rng.uniform(0.4, 0.9) * np.exp(-(((s - 1.0) / 0.04) ** 2)))
        # Posterior acoustic effect: extra (shadow) or reduced (enhancement) attenuation inside.
        shadow = kind == "malignant" and rng.random() < 0.8 or kind == "benign" and rng.random() < 0.2
        extra = rng.uniform(2.5, 6.0) if shadow else -rng.uniform(3.0, 6.0)
        attenuation = attenuation + extra * inside

    # Envelope: attenuation integrated along each beam, partly compensated by time-gain control.
    depth_step = 1.0 / (nd - 1)
    along = np.cumsum(attenuation, axis=0) * depth_step
    tgc = attenuation[0, 0] * rng.uniform(0.55, 0.85)
    envelope = echo * np.exp(-along + tgc * dd)
    speckle = np.hypot(
        ndimage.gaussian_filter(rng.standard_normal(dd.shape, dtype=np.float32), (0.7, 1.2)),
        ndimage.gaussian_filter(rng.standard_normal(dd.shape, dtype=np.float32), (0.7, 1.2)),
    )
    envelope = envelope * speckle / np.sqrt(np.mean(speckle**2))
    dynamic_range = rng.uniform(40, 50)
    db = 20 * np.log10(envelope / np.percentile(envelope, 99.5) + 1e-6)
    beam_image = np.clip(1 + db / dynamic_range, 0, 1) * rng.uniform(0.85, 1.0)

    # Scan conversion into the image grid; outside the field of view stays black.
    coords = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(coords, coords, indexing="xy")
    b, d = probe.to_beam(x, y)
    fov = (np.abs(b) <= 1) & (d >= 0) & (d <= 1)
    rows, cols = d * (nd - 1), (b + 1) / 2 * (nb - 1)
    image = ndimage.map_coordinates(beam_image, [rows, cols], order=1, mode="nearest")
    image = np.where(fov, image, 0.0)
    mask = (lesion.scale(x, y) < 1) & fov if lesion is not None else np.zeros((size, size), bool)
    return np.round(image * 255).astype(np.uint8), mask


@functools.lru_cache(maxsize=4)
def _generate_cached(count: int, size: int, seed: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    ids, strata, images, masks = generate(PhantomParams(count, size, seed))
    images.flags.writeable = masks.flags.writeable = False  # shared between loads in one process
    return ids, strata, images, masks


def generate(params: PhantomParams) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Ids (``benign (1)``, ...), strata, images (N x S x S uint8) and masks (N x S x S bool)."""
    ids, strata = [], []
    for name, n in strata_counts(params.count):
        ids += [f"{name} ({i + 1})" for i in range(n)]
        strata += [name] * n
    images = np.empty((params.count, params.size, params.size), np.uint8)
    masks = np.empty((params.count, params.size, params.size), bool)
    for i, kind in enumerate(strata):
        images[i], masks[i] = render(np.random.default_rng([params.seed, i]), params.size, kind)
    return ids, strata, images, masks


class PhantomSource(DatasetSource):
    """The ``phantom`` dataset; ``spec`` may carry parameters: ``phantom:count=50,size=64,seed=1``."""

    Params = PhantomParams

    def load(self, spec: str | None, options: dict[str, Any]) -> SegDataset:
        values: dict[str, Any] = dict(parse_spec_params(spec))
        values.update(options.get("params") or {})
        params = build_params(PhantomParams, values, "dataset phantom")
        ids, strata, images, masks = _generate_cached(params.count, params.size, params.seed)
        hashes = {
            i: hashlib.sha256(images[k].tobytes() + np.packbits(masks[k]).tobytes()).hexdigest()
            for k, i in enumerate(ids)
        }
        return assemble_dataset(
            name="phantom",
            ids=list(ids),
            native_images=list(images),
            native_masks=list(masks),
            strata=list(strata),
            cases=list(ids),
            content_hashes=hashes,
            options={**options, "source": "phantom", "params": asdict(params)},
        )


@hookimpl
def register_datasets(register) -> None:
    register("phantom", PhantomSource)
