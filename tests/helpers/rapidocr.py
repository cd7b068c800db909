"""Pretrained models nobody here trained: the PaddleOCR text detector, direction classifier and recognizer that the
``rapidocr-onnxruntime`` package ships as ONNX files (paddle2onnx exports: Constant-node weights, ``-1`` and unnamed
dynamic dims, opsets 11-12).

The package is installed without its dependencies (``pip install --no-deps rapidocr-onnxruntime==1.4.4``, as the
Makefile's venv recipe does): only its model files are used, so importing it (which needs OpenCV) is never needed.
The files are found through the installed distribution's file list. A missing package fails the test that asks
for it, with the install command, and skips nothing.
"""
from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

DIST = "rapidocr-onnxruntime"
VERSION = "1.4.4"
INSTALL = f"pip install --no-deps {DIST}=={VERSION}"


@dataclasses.dataclass(frozen=True)
class OcrModel:
    """One shipped model and the input geometry it is run at (its spatial input dims are dynamic)."""

    kind: str
    file: str
    input_hw: tuple[int, int]


MODELS = {
    "det": OcrModel("det", "ch_PP-OCRv4_det_infer.onnx", (320, 320)),
    "cls": OcrModel("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192)),
    "rec": OcrModel("rec", "ch_PP-OCRv4_rec_infer.onnx", (48, 320)),
}


def model_path(kind: str) -> Path:
    """The installed ``.onnx`` file of ``kind`` (det, cls or rec); fails the calling test when it is not installed."""
    spec = MODELS[kind]
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{DIST} is not installed, so its pretrained {kind} model {spec.file} is missing; install it "
                    f"with `{INSTALL}` (or `make venv`)", pytrace=False)
    hits = [f for f in dist.files or () if f.name == spec.file]
    path = Path(dist.locate_file(hits[0])) if hits else None
    if path is None or not path.is_file():
        pytest.fail(f"{DIST} {dist.version} does not hold {spec.file}; reinstall it with `{INSTALL}`", pytrace=False)
    return path


def text_lines(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``[n, h, w, 3]`` uint8 text-line-like images: dark glyph-like strokes (with ascenders) along a baseline on a
    light background, half of them upside down (what the direction classifier tells apart)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.full((h, w), rng.uniform(170, 250))
        x = int(rng.integers(2, 12))
        base = int(h * rng.uniform(0.55, 0.75))
        while x < w - 8:
            cw, ch = int(rng.integers(3, 9)), int(rng.integers(max(1, int(h * 0.2)), max(2, int(h * 0.5))))
            img[max(0, base - ch):base, x:x + cw] = rng.uniform(0, 80)
            if rng.random() < 0.3:
                top = max(0, base - ch)
                img[max(0, top - int(rng.integers(2, 8))):top, x:x + 2] = rng.uniform(0, 80)
            x += cw + int(rng.integers(1, 6))
        img += rng.normal(0, 8, img.shape)
        if rng.random() < 0.5:
            img = img[::-1, ::-1]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
    return out


def text_pages(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``[n, h, w, 3]`` uint8 page-like images for the detector: a few text lines (:func:`text_lines`) pasted at
    random rows of a light background."""
    rng = np.random.default_rng(seed)
    pages = np.full((n, h, w, 3), 235, np.uint8)
    for i in range(n):
        for _ in range(int(rng.integers(2, 6))):
            lh, lw = int(rng.integers(16, 40)), int(rng.integers(w // 3, w - 8))
            y, x = int(rng.integers(0, h - lh)), int(rng.integers(0, w - lw))
            line = text_lines(1, lh, lw, seed=int(rng.integers(1 << 30)))[0]
            pages[i, y:y + lh, x:x + lw] = np.minimum(pages[i, y:y + lh, x:x + lw], line)
    return pages
