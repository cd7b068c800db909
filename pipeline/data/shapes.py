"""``shapes``: a procedurally generated, learnable-but-hard 10-class shape recognition set (RGB, seeded, cached).

Each image shows one large *target* shape whose class is the label (circle, square, triangle, star, cross, ring,
ellipse, crescent, chevron, stripes) drawn with random size, rotation, position (it may touch the border), fill colour
or two-colour gradient, optional outline of random stroke width; behind it up to three small distractor shapes of any
class and random thin lines; in front of it, sometimes, an occluding bar; the background is a random crop (random
scale, flip, contrast and colour jitter) of one of scikit-learn's two bundled photographs; finally brightness/contrast
jitter and Gaussian noise. The target's fill colour is kept at a minimum RGB distance from the background it sits on,
and the distractors are always much smaller than the target, so the label is always recoverable; every difficulty
knob is in ``DIFFICULTY`` (see docs/shapes.md for how it was tuned and what resnet20 reaches on it).

Rendering is vectorised over a chunk of images with numpy: each shape is an (approximate) signed distance function
evaluated on per-image rotated/scaled coordinates, turned into anti-aliased coverage and alpha-composited; images are
rendered at twice the output size (for output sizes <= 64) and box-downsampled, which anti-aliases edges.

Generated splits are cached as ``.npz`` under ``$LOWRANK_CACHE`` (default ``~/.cache/lowrank-deploy``), keyed by the
generator version, seed, size and counts; counts default to 5000/1000/2000 (4000/500/1000 above 64 px) -- smaller
than the 20k/2k/5k first planned, so that the default baseline (resnet20, 15 epochs at batch 32) takes about 7 minutes
on one CPU core, not an hour -- and can be set with the config keys ``dataset.train_size``/``val_size``/``test_size``
(``load_dataset(..., split_sizes=...)``), which are part of every stage key.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.artifacts import atomic_write_bytes
from pipeline.data.core import DATASETS, DatasetSplits, finish
from pipeline.errors import ConfigError, InputError

# Bump whenever the rendering changes: it is part of the cache key, so stale caches are never reused.
GENERATOR_VERSION = 3
CLASS_NAMES = ["circle", "square", "triangle", "star", "cross", "ring", "ellipse", "crescent", "chevron", "stripes"]
NUM_CLASSES = len(CLASS_NAMES)
_CHUNK_PIXELS = 6_000_000  # rendered pixels per chunk: bounds peak memory at a few hundred MB

#: Difficulty knobs (fractions of the image side unless noted). Changing any of them changes the images: bump
#: GENERATOR_VERSION with it. Tuned so that resnet20 reaches 85-93 % test accuracy at the default budget.
DIFFICULTY: dict[str, object] = {
    "target_radius": (0.25, 0.44),      # target shape radius
    "target_centre": (0.33, 0.67),      # target centre range (both axes)
    "min_contrast": 0.35,               # minimum RGB distance of the target fill from the local background mean
    "outline_p": 0.35,                  # probability of an outline on the target
    "stroke": (0.05, 0.14),             # outline width, as a fraction of the radius
    "gradient_p": 0.3,                  # probability of a two-colour gradient fill
    "distractor_p": (0.65, 0.35, 0.1),  # probability of each distractor slot
    "distractor_radius": (0.06, 0.12),  # distractor radius (always at most half the smallest target's)
    "line_p": (0.35, 0.35),             # probability of each thin clutter line
    "line_half_width": (0.01, 0.025),
    "occluder_p": 0.35,                 # probability of a bar across the target
    "occluder_half_width": (0.03, 0.065),
    "occluder_offset": (0.4, 1.0),      # distance of the bar from the target centre, as a fraction of the radius
    "bg_crop": (0.15, 0.7),             # background crop side, as a fraction of the photo's short side
    "bg_contrast": (0.65, 1.0),         # background contrast scale about its mean
    "contrast": (0.8, 1.2),             # final contrast jitter
    "noise_sigma": (0.0, 0.075),        # Gaussian pixel noise (images in [0, 1])
}


# ------------------------------------------------------------------------------------------------ shape distances
# Each function maps unit-scale local coordinates (u, v) (shape "radius" ~ 1) and a per-image parameter p in [0, 1)
# (shape-specific variation) to an approximate signed distance (< 0 inside).
def _polygon(n: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    angles = (np.arange(n) + 0.5) * 2 * np.pi / n + np.pi / 2
    apothem = np.cos(np.pi / n)

    def sdf(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
        d = u * np.float32(np.cos(angles[0])) + v * np.float32(np.sin(angles[0]))
        for a in angles[1:]:
            np.maximum(d, u * np.float32(np.cos(a)) + v * np.float32(np.sin(a)), out=d)
        return d - np.float32(apothem)

    return sdf


def _circle(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v) - np.float32(0.9)


def _box(u: np.ndarray, v: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _square(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.78, 0.78)


def _star(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    inner = (0.38 + 0.14 * p)[:, None, None]
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(u, v)  # 0 at the top, so one point faces "up" before rotation
    t = np.abs(((phi * (5 / (2 * np.pi))) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
    return (rho - (inner + (1 - inner) * t)) * np.float32(0.7)


def _cross(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    t = (0.22 + 0.12 * p)[:, None, None]
    return np.minimum(_box(u, v, 0.95, t), _box(u, v, t, 0.95))


def _ring(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    half = (0.14 + 0.12 * p)[:, None, None]
    return np.abs(np.sqrt(u * u + v * v) - (0.95 - half)) - half


def _ellipse(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    b = (0.4 + 0.15 * p)[:, None, None]
    # Scaled implicit function: close to a true distance near the boundary for these aspect ratios.
    return (np.sqrt(u * u + (v / b) ** 2) - 1) * b


def _chevron(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    t = (0.16 + 0.1 * p)[:, None, None]
    return np.maximum(np.abs(v + np.abs(u) - 0.35) * np.float32(0.707) - t, np.abs(u) - 0.9)


def _crescent(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    # A disc with an offset disc bitten out of it; the horns face "up" before rotation.
    shift = (0.35 + 0.15 * p)[:, None, None]
    outer = np.sqrt(u * u + v * v) - np.float32(0.95)
    bite = np.sqrt(u * u + (v + shift) ** 2) - np.float32(0.8)
    return np.maximum(outer, -bite)


def _stripes(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    period = (0.42 + 0.18 * p)[:, None, None]
    w = np.abs((v / period) % 1.0 - 0.5) * period  # distance to the stripe centre line
    return np.maximum(_box(u, v, 0.85, 0.85), w - period / 4)


SDFS: list[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = [
    _circle, _square, _polygon(3), _star, _cross, _ring, _ellipse, _crescent, _chevron, _stripes,
]


# ------------------------------------------------------------------------------------------------------ rendering
_PHOTOS: list[np.ndarray] | None = None


def _photos() -> list[np.ndarray]:
    """scikit-learn's two bundled photographs, float32 HWC in [0, 1], halved (less aliasing when sampled small)."""
    global _PHOTOS
    if _PHOTOS is None:
        from sklearn.datasets import load_sample_images

        imgs = load_sample_images().images
        out = []
        for im in imgs:
            a = im.astype(np.float32) / 255.0
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            out.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)))
        _PHOTOS = out
    return _PHOTOS


def _u(rng: np.random.Generator, key: str, shape: int | tuple[int, ...]) -> np.ndarray:
    """Uniform float32 samples in the range ``DIFFICULTY[key]``."""
    lo, hi = DIFFICULTY[key]  # type: ignore[misc]
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _backgrounds(rng: np.random.Generator, b: int, res: int) -> np.ndarray:
    """Random crops (scale, position, flip) of the photos with contrast and colour jitter: (b, 3, res, res)."""
    photos = _photos()
    out = np.empty((b, res, res, 3), dtype=np.float32)
    which = rng.integers(0, len(photos), b)
    for k, photo in enumerate(photos):
        idx = np.flatnonzero(which == k)
        if not len(idx):
            continue
        ph, pw = photo.shape[:2]
        n = len(idx)
        side = _u(rng, "bg_crop", n) * min(ph, pw)  # crop window, in photo pixels
        y0 = rng.uniform(0, 1, n) * (ph - side)
        x0 = rng.uniform(0, 1, n) * (pw - side)
        grid = (np.arange(res, dtype=np.float32) + 0.5) / res
        rows = np.clip((y0[:, None] + grid[None] * side[:, None]).astype(np.int64), 0, ph - 1)
        cols = np.clip((x0[:, None] + grid[None] * side[:, None]).astype(np.int64), 0, pw - 1)
        flip = rng.random(n) < 0.5
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
        out[idx] = photo[rows[:, :, None], cols[:, None, :]]
    bg = out.transpose(0, 3, 1, 2)
    mean = bg.mean(axis=(1, 2, 3), keepdims=True)
    bg = mean + (bg - mean) * _u(rng, "bg_contrast", (b, 1, 1, 1))  # flatter backgrounds than the raw photos
    gains = rng.uniform(0.6, 1.4, (b, 3, 1, 1)).astype(np.float32)
    gray = rng.random(b) < 0.2
    bg = bg * gains
    bg[gray] = bg[gray].mean(axis=1, keepdims=True)
    bg = bg + rng.uniform(-0.15, 0.15, (b, 1, 1, 1)).astype(np.float32)  # brightness shift
    return np.clip(bg, 0, 1)


def _local_mean(canvas: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean colour (b, 3) of ``canvas`` over each image's square box of half-side ``r`` around ``(cx, cy)``."""
    rows = (np.abs(grid[None] - cy[:, None]) <= r[:, None]).astype(np.float32)
    cols = (np.abs(grid[None] - cx[:, None]) <= r[:, None]).astype(np.float32)
    total = np.einsum("bcij,bi,bj->bc", canvas, rows, cols)
    area = np.maximum(rows.sum(1) * cols.sum(1), 1.0)[:, None]
    return (total / area).astype(np.float32)


def _contrasting(rng: np.random.Generator, ref: np.ndarray, min_dist: float, tries: int = 4) -> np.ndarray:
    """Random colours (b, 3) at RGB distance >= ``min_dist`` from ``ref`` (b, 3): rejection, then a fallback."""
    colour = rng.random(ref.shape).astype(np.float32)
    for _ in range(tries):
        bad = np.linalg.norm(colour - ref, axis=1) < min_dist
        if not bad.any():
            return colour
        colour[bad] = rng.random((int(bad.sum()), 3)).astype(np.float32)
    bad = np.linalg.norm(colour - ref, axis=1) < min_dist
    colour[bad] = np.clip(np.where(ref[bad] > 0.5, ref[bad] - 0.55, ref[bad] + 0.55), 0, 1)
    return colour


def _draw(canvas: np.ndarray, rng: np.random.Generator, cls: np.ndarray, cx: np.ndarray, cy: np.ndarray,
          r: np.ndarray, grid: np.ndarray, active: np.ndarray, styled: bool) -> None:
    """Composite one shape per image (where ``active``) onto ``canvas`` in place.

    Args:
        canvas: (b, 3, res, res) float32 images.
        rng: randomness for colours, rotation, style.
        cls: (b,) class of each shape.
        cx, cy, r: (b,) centre and radius in pixels.
        grid: (res,) pixel-centre coordinates.
        active: (b,) which images get this shape.
        styled: a target shape: its colours contrast with the background under it, and it may get a gradient and an
            outline; distractors are flat-coloured with any colour.
    """
    b = len(cls)
    theta = rng.uniform(0, 2 * np.pi, b).astype(np.float32)
    p = rng.random(b).astype(np.float32)
    if styled:
        ref = _local_mean(canvas, cx, cy, r, grid)
        colour = _contrasting(rng, ref, float(DIFFICULTY["min_contrast"]))  # type: ignore[arg-type]
        colour2 = _contrasting(rng, ref, float(DIFFICULTY["min_contrast"]))  # type: ignore[arg-type]
    else:
        colour = rng.random((b, 3)).astype(np.float32)
        colour2 = colour
    gradient = styled & (rng.random(b) < float(DIFFICULTY["gradient_p"]))  # type: ignore[arg-type]
    gdir = rng.uniform(0, 2 * np.pi, b).astype(np.float32)
    outline = styled & (rng.random(b) < float(DIFFICULTY["outline_p"]))  # type: ignore[arg-type]
    stroke = _u(rng, "stroke", b)
    ocolour = rng.random((b, 3)).astype(np.float32)
    idx_all = np.flatnonzero(active)
    if not len(idx_all):
        return
    for c in range(NUM_CLASSES):
        idx = idx_all[cls[idx_all] == c]
        if not len(idx):
            continue
        dx = grid[None, None, :] - cx[idx, None, None]
        dy = grid[None, :, None] - cy[idx, None, None]
        cos, sin = np.cos(theta[idx])[:, None, None], np.sin(theta[idx])[:, None, None]
        rr = r[idx, None, None]
        u = (dx * cos + dy * sin) / rr
        v = (dy * cos - dx * sin) / rr
        d = SDFS[c](u, v, p[idx])
        # Distance in unit coordinates -> pixels (x radius) -> anti-aliased coverage over one pixel.
        alpha = np.clip(0.5 - d * rr, 0, 1)
        fill = np.broadcast_to(colour[idx, :, None, None], (len(idx), 3) + d.shape[1:]).copy()
        g = gradient[idx]
        if g.any():
            ramp = (u[g] * np.cos(gdir[idx][g])[:, None, None] + v[g] * np.sin(gdir[idx][g])[:, None, None])
            t = np.clip(ramp * 0.5 + 0.5, 0, 1)[:, None]
            fill[g] = colour[idx][g][:, :, None, None] * (1 - t) + colour2[idx][g][:, :, None, None] * t
        o = outline[idx]
        if o.any():
            inner = np.clip(0.5 - (d + stroke[idx, None, None]) * rr, 0, 1)
            sel = o[:, None, None]
            oc = ocolour[idx][:, :, None, None]
            # Outline colour where covered but outside the inset fill region.
            fill = np.where(sel[:, None], fill * inner[:, None] + oc * (1 - inner[:, None]), fill)
        a = alpha[:, None]
        canvas[idx] = canvas[idx] * (1 - a) + fill * a


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Render ``len(labels)`` images of side ``size`` as uint8 (n, 3, size, size)."""
    n = len(labels)
    ss = 2 if size <= 64 else 1
    res = size * ss
    grid = (np.arange(res, dtype=np.float32) + 0.5)
    canvas = _backgrounds(rng, n, res)
    # Distractors: small shapes of any class behind the target (always much smaller than the target).
    for prob in DIFFICULTY["distractor_p"]:  # type: ignore[attr-defined]
        active = rng.random(n) < prob
        rd = _u(rng, "distractor_radius", n) * res
        cx, cy = (rng.uniform(0, res, n).astype(np.float32) for _ in range(2))
        _draw(canvas, rng, rng.integers(0, NUM_CLASSES, n), cx, cy, rd, grid, active, styled=False)
    # Thin clutter lines across the background.
    for prob in DIFFICULTY["line_p"]:  # type: ignore[attr-defined]
        _line(canvas, rng, grid, rng.random(n) < prob, res)
    # The target.
    r = _u(rng, "target_radius", n) * res
    cx = _u(rng, "target_centre", n) * res
    cy = _u(rng, "target_centre", n) * res
    _draw(canvas, rng, labels, cx, cy, r, grid, np.ones(n, dtype=bool), styled=True)
    # Occluder: a bar across part of the target.
    _line(canvas, rng, grid, rng.random(n) < float(DIFFICULTY["occluder_p"]), res,  # type: ignore[arg-type]
          near=(cx, cy, r))
    if ss > 1:
        canvas = canvas.reshape(n, 3, size, ss, size, ss).mean(axis=(3, 5))
    contrast = _u(rng, "contrast", (n, 1, 1, 1))
    canvas = (canvas - 0.5) * contrast + 0.5 + rng.uniform(-0.1, 0.1, (n, 1, 1, 1)).astype(np.float32)
    sigma = _u(rng, "noise_sigma", (n, 1, 1, 1))
    canvas = canvas + sigma * rng.standard_normal(canvas.shape, dtype=np.float32)
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def _line(canvas: np.ndarray, rng: np.random.Generator, grid: np.ndarray, active: np.ndarray, res: int,
          near: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """A straight bar (random colour, width, angle); with ``near`` it passes close to the target as an occluder."""
    n = canvas.shape[0]
    theta = rng.uniform(0, np.pi, n).astype(np.float32)
    colour = rng.random((n, 3)).astype(np.float32)
    if near is None:
        cx, cy = (rng.uniform(0, res, n).astype(np.float32) for _ in range(2))
        half = _u(rng, "line_half_width", n) * res
    else:
        tcx, tcy, tr = near
        off = _u(rng, "occluder_offset", n) * tr
        ang = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        cx, cy = tcx + off * np.cos(ang), tcy + off * np.sin(ang)
        half = _u(rng, "occluder_half_width", n) * res
    idx = np.flatnonzero(active)
    if not len(idx):
        return
    dx = grid[None, None, :] - cx[idx, None, None]
    dy = grid[None, :, None] - cy[idx, None, None]
    dist = np.abs(-dx * np.sin(theta[idx])[:, None, None] + dy * np.cos(theta[idx])[:, None, None])
    a = np.clip(half[idx, None, None] + 0.5 - dist, 0, 1)[:, None]
    canvas[idx] = canvas[idx] * (1 - a) + colour[idx, :, None, None] * a


def generate(n: int, size: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate one split: uint8 images (n, 3, size, size) and balanced int64 labels (n,).

    The random stream depends only on (generator version, seed, size, split id), so e.g. the test split does not
    change when the train count does.

    Args:
        n: number of images.
        size: image side.
        seed: dataset seed.
        split: 0 train, 1 val, 2 test.
    """
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, int(seed), int(size), int(split)]))
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)  # balanced to within one per class
    x = np.empty((n, 3, size, size), dtype=np.uint8)
    res = size * (2 if size <= 64 else 1)
    chunk = max(1, _CHUNK_PIXELS // (res * res))
    for i in range(0, n, chunk):
        x[i:i + chunk] = _render(rng, labels[i:i + chunk], size)
    return x, labels


def cache_dir() -> Path:
    """``$LOWRANK_CACHE`` or ``~/.cache/lowrank-deploy``."""
    return Path(os.environ.get("LOWRANK_CACHE") or Path.home() / ".cache" / "lowrank-deploy").expanduser()


def load_or_generate(seed: int, size: int, counts: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Return the cached arrays for this key, generating and atomically caching them when absent or unreadable."""
    name = f"shapes-v{GENERATOR_VERSION}-seed{seed}-s{size}-n{counts[0]}-{counts[1]}-{counts[2]}.npz"
    path = cache_dir() / name
    keys = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in keys}
            if all(len(arrays[f"y_{s}"]) == c for s, c in zip(("train", "val", "test"), counts)):
                return arrays
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache file is regenerated, never trusted
    arrays = {}
    for split_id, (s, c) in enumerate(zip(("train", "val", "test"), counts)):
        arrays[f"x_{s}"], arrays[f"y_{s}"] = generate(c, size, seed, split_id)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs regeneration next time
    return arrays


@DATASETS.register("shapes", needs_path=False, default_input_size=32, split_sizes=True)
def load_shapes(path: str | None, seed: int, input_size: int | None,
                split_sizes: tuple[int | None, int | None, int | None] = (None, None, None)) -> DatasetSplits:
    """Load (generating once and caching) the shapes dataset.

    Args:
        path: must be None.
        seed: generation seed (different seeds give different images).
        input_size: side in pixels (default 32; 64 or 224 for ImageNet-style models).
        split_sizes: (train, val, test) image counts; None entries take the defaults (see the module docstring).

    Raises:
        ConfigError: a path was given, a bad size, or a count below 1.
    """
    if path:
        raise ConfigError(f"dataset 'shapes' takes no path (got {path!r}); use 'shapes' and the input size setting")
    size = int(input_size or 32)
    if size < 16:
        raise ConfigError(f"dataset 'shapes' needs input_size >= 16 (got {size}); shapes are unrecognisable below that")
    defaults = (5000, 1000, 2000) if size <= 64 else (4000, 500, 1000)
    counts = tuple(int(d if n is None else n) for n, d in zip(split_sizes, defaults))
    if min(counts) < 1:
        raise ConfigError(f"dataset 'shapes' needs at least one image per split (got {counts}); set "
                          f"dataset.train_size/val_size/test_size >= 1")
    a = load_or_generate(int(seed), size, counts)
    for s in ("train", "val", "test"):
        if a[f"x_{s}"].shape[1:] != (3, size, size):
            raise InputError(f"cached shapes file for size {size} has images {a[f'x_{s}'].shape[1:]}; delete "
                             f"{cache_dir()} and rerun")
    xs = tuple(torch.from_numpy(a[f"x_{s}"]).float().div_(255.0) for s in ("train", "val", "test"))
    ys = tuple(torch.from_numpy(a[f"y_{s}"].astype(np.int64)) for s in ("train", "val", "test"))
    return finish("shapes", xs, ys, NUM_CLASSES, CLASS_NAMES)  # type: ignore[arg-type]
